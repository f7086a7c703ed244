"""Classification metrics, length buckets and paired tests (numpy only)."""

from __future__ import annotations

import math

import numpy as np

# Document length buckets in document tokens (without [CLS]/[SEP]).
LENGTH_BUCKETS = (("up to 512", 0, 512), ("513-2048", 513, 2048), ("over 2048", 2049, None))


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[int(t), int(p)] += 1
    return matrix


def per_class(matrix: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    rows = []
    for k in range(matrix.shape[0]):
        tp = float(matrix[k, k])
        predicted = float(matrix[:, k].sum())
        support = int(matrix[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def classification_report(y_true, y_pred, labels: list[str]) -> dict:
    """Accuracy, macro-F1 (over classes present in ``y_true``), per-class figures, matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    classes = per_class(matrix)
    present = [c for c in classes if c["support"] > 0]
    return {
        "documents": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
        "per_class": {label: c for label, c in zip(labels, classes, strict=True)},
        "confusion_matrix": matrix.tolist(),
    }


def length_bucket(num_tokens: int) -> str:
    for name, low, high in LENGTH_BUCKETS:
        if num_tokens >= low and (high is None or num_tokens <= high):
            return name
    raise ValueError(num_tokens)


def by_length(y_true, y_pred, num_tokens, labels: list[str]) -> dict:
    """The report restricted to each length bucket (empty buckets: 0 documents)."""
    buckets = np.asarray([length_bucket(int(n)) for n in num_tokens])
    out = {}
    for name, _, _ in LENGTH_BUCKETS:
        keep = buckets == name
        report = classification_report(np.asarray(y_true)[keep], np.asarray(y_pred)[keep], labels)
        out[name] = {k: report[k] for k in ("documents", "accuracy", "macro_f1")}
    return out


def mcnemar(correct_a, correct_b) -> dict:
    """Exact (binomial) two-sided McNemar test on paired correctness."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        p = 1.0
    else:
        k = min(only_a, only_b)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        p = min(1.0, 2 * tail)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p}


def bootstrap_difference(correct_a, correct_b, samples: int = 10_000, seed: int = 0) -> dict:
    """Paired bootstrap of accuracy(a) - accuracy(b): mean and 95% interval."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return {
        "difference": float(a.mean() - b.mean()),
        "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "p_value": float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))),
    }


def plot_confusion(matrix, labels: list[str], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
