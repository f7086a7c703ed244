"""Classification metrics, length buckets and paired tests.

The counting is the libraries': the confusion matrix and per-class precision, recall and F1
come from scikit-learn, McNemar's exact test from SciPy. What is ours is the report's shape
(the JSON ``longdoc evaluate`` writes), macro-F1 over the classes present in the data, the
length buckets and the paired bootstrap.

Multi-label (boolean ``[N, L]`` truth and decisions): micro-F1 (every document-label cell
counted once), macro-F1 over the labels present in the truth, per-label figures, subset
accuracy (the exact label set), by length; paired tests on exact matches (McNemar) and a
paired bootstrap of the micro-F1 difference over documents.

The libraries are imported when a function runs, so importing this module (``longdoc
--help`` does) stays cheap.
"""

from __future__ import annotations

import warnings

import numpy as np

# Document length buckets in document tokens (without [CLS]/[SEP]).
LENGTH_BUCKETS = (("up to 512", 0, 512), ("513-2048", 513, 2048), ("over 2048", 2049, None))


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """``[true, predicted]`` counts over label indices ``0 .. num_labels - 1`` (every class
    has its row and column, documents or not)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not len(y_true):  # scikit-learn refuses empty input; an empty length bucket is not
        return np.zeros((num_labels, num_labels), dtype=np.int64)
    with warnings.catch_warnings():  # a one-label model's 1x1 matrix is the right shape
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        matrix = sk_confusion_matrix(y_true, y_pred, labels=np.arange(num_labels))
    return matrix.astype(np.int64)


def per_class(y_true, y_pred, num_labels: int) -> list[dict]:
    """Precision, recall, F1 and support per class (0 where undefined: a class never
    predicted has precision 0, a class with no documents recall 0)."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return [dict(zero) for _ in range(num_labels)]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(num_labels), average=None, zero_division=0.0
    )
    return [
        {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for p, r, f, s in zip(precision, recall, f1, support, strict=True)
    ]


def classification_report(y_true, y_pred, labels: list[str]) -> dict:
    """Accuracy, macro-F1 (over classes present in ``y_true``), per-class figures, matrix.

    Macro-F1 leaves out classes with no documents in ``y_true`` (scikit-learn's
    ``average="macro"`` would count them as 0 over all ``labels``): a length bucket or a
    test split without some class is not penalised for it."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    classes = per_class(y_true, y_pred, len(labels))
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
    """Exact (binomial) two-sided McNemar test on paired correctness.

    Only the discordant pairs count: under the null hypothesis each one is as likely to
    favour ``a`` as ``b``, so ``only_a_correct ~ Binomial(n, 1/2)``. The exact test, not the
    chi-square approximation, because the discordant counts here are small (tens)."""
    from scipy.stats import binomtest

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": min(1.0, p)}


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


# --------------------------------------------------------------------------- multi-label


def _bool_matrix(values, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=bool)
    if matrix.ndim != 2:
        raise ValueError(f"{name}: expected a [documents, labels] matrix (got {matrix.shape})")
    return matrix


def multilabel_report(truth, predicted, labels: list[str]) -> dict:
    """Micro-F1, macro-F1 (over the labels with a document in ``truth``), subset accuracy
    and per-label precision/recall/F1/support of boolean ``[N, L]`` label sets.

    An empty label set (no label decided, or none true) is a valid row: it counts as false
    negatives (or false positives) of its labels and is an exact match only against an empty
    set. Micro-F1 is 0 where no cell is positive in either (nothing to find, nothing found)."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    truth = _bool_matrix(truth, "truth")
    predicted = _bool_matrix(predicted, "predicted")
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and predictions {predicted.shape} differ")
    if truth.shape[1] != len(labels):
        raise ValueError(f"{truth.shape[1]} label columns for {len(labels)} labels")
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    if not len(truth):
        return {
            "documents": 0,
            "micro_f1": 0.0,
            "macro_f1": 0.0,
            "subset_accuracy": 0.0,
            "per_label": {label: dict(zero) for label in labels},
        }
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, average=None, zero_division=0.0
    )
    micro = f1_score(truth, predicted, average="micro", zero_division=0.0)
    per_label = {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for label, p, r, f, n in zip(labels, precision, recall, f1, support, strict=True)
    }
    present = [c["f1"] for c in per_label.values() if c["support"] > 0]
    return {
        "documents": int(len(truth)),
        "micro_f1": float(micro),
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "subset_accuracy": float(exact_match(truth, predicted).mean()),
        "per_label": per_label,
    }


def multilabel_by_length(truth, predicted, num_tokens, labels: list[str]) -> dict:
    """:func:`multilabel_report`'s headline figures in each length bucket."""
    truth = _bool_matrix(truth, "truth")
    predicted = _bool_matrix(predicted, "predicted")
    buckets = np.asarray([length_bucket(int(n)) for n in num_tokens])
    out = {}
    for name, _, _ in LENGTH_BUCKETS:
        keep = buckets == name
        report = multilabel_report(truth[keep], predicted[keep], labels)
        out[name] = {k: report[k] for k in ("documents", "micro_f1", "macro_f1", "subset_accuracy")}
    return out


def exact_match(truth, predicted) -> np.ndarray:
    """Per document: whether the decided label set is exactly the true one (what McNemar
    pairs for multi-label)."""
    return (_bool_matrix(truth, "truth") == _bool_matrix(predicted, "predicted")).all(axis=1)


def _micro_f1_counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``[N, 2]`` per document: true positives and (false positives + false negatives)."""
    tp = (truth & predicted).sum(axis=1)
    wrong = (truth ^ predicted).sum(axis=1)
    return np.stack([tp, wrong], axis=1).astype(np.float64)


def _micro_f1_of(counts: np.ndarray) -> np.ndarray:
    """Micro-F1 from summed counts ``[..., 2]``: 2 TP / (2 TP + FP + FN), 0 where undefined."""
    tp, wrong = counts[..., 0], counts[..., 1]
    denominator = 2 * tp + wrong
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def bootstrap_micro_f1_difference(
    truth, predicted_a, predicted_b, samples: int = 10_000, seed: int = 0
) -> dict:
    """Paired bootstrap of micro-F1(a) - micro-F1(b) over documents (the same resampled
    documents for both): the difference on the data, its 95% interval and a two-sided
    p-value (twice the smaller share of resamples on either side of 0)."""
    truth = _bool_matrix(truth, "truth")
    a = _micro_f1_counts(truth, _bool_matrix(predicted_a, "predicted_a"))
    b = _micro_f1_counts(truth, _bool_matrix(predicted_b, "predicted_b"))
    if not len(truth):
        raise ValueError("no documents to resample")
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    for start in range(0, samples, 1000):  # bounded memory: 1000 resamples at a time
        idx = rng.integers(0, len(truth), size=(min(1000, samples - start), len(truth)))
        diffs[start : start + len(idx)] = _micro_f1_of(a[idx].sum(axis=1)) - _micro_f1_of(
            b[idx].sum(axis=1)
        )
    return {
        "difference": float(_micro_f1_of(a.sum(axis=0)) - _micro_f1_of(b.sum(axis=0))),
        "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "p_value": float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))),
    }


def plot_per_label_f1(per_label: dict, path, title: str = "") -> None:
    """Horizontal bars of each label's F1 (the multi-label report's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(per_label)
    f1 = [per_label[label]["f1"] for label in labels]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(labels) + 1)))
    ax.barh(range(len(labels)), f1, color="C0")
    ax.set_yticks(range(len(labels)), [f"{x} ({per_label[x]['support']})" for x in labels])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (support)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
