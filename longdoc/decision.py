"""How a document's logits become its labels: one rule for training, export, serving and
evaluation.

* ``single-label``: probabilities are the softmax of the logits; the decision is the argmax.
* ``multi-label``: each label's probability is its own sigmoid; the decision is every label
  whose probability is at or over its threshold (possibly none). Thresholds are chosen on
  the validation split by ``choose_thresholds``: one ``global`` threshold for all labels, or
  ``per-label`` ones; ``kind`` records which, ``default`` is 0.5 for every label (no
  validation data to choose on).

A :class:`Decision` is saved next to the model (``decision.json`` in a checkpoint and in the
repository's ensemble folder) and baked into the exported aggregator, whose ``DECISIONS``
output is this rule's result, so a plain ``tritonclient`` user gets the label set without
knowing the thresholds. A checkpoint or repository without the file is single-label
(everything exported before multi-label existed).

numpy and the standard library only: the Triton stubs and ``longdoc[client]`` import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longdoc.contract import DECISION_FILE, PROBLEMS

SINGLE_LABEL, MULTI_LABEL = PROBLEMS
THRESHOLD_KINDS = ("argmax", "default", "global", "per-label")
DEFAULT_THRESHOLD = 0.5
# Thresholds tried on the validation split (a grid: the validation sets here are tens to
# hundreds of documents, so finer steps would fit their noise).
THRESHOLD_GRID = tuple(round(x, 2) for x in np.arange(0.05, 0.951, 0.05))


@dataclass(frozen=True)
class Decision:
    """The problem and, for multi-label, one threshold per label (label order)."""

    problem: str = SINGLE_LABEL
    thresholds: tuple[float, ...] = ()
    kind: str = "argmax"
    chosen_on: dict = field(default_factory=dict, compare=False)  # what the choice saw

    def __post_init__(self) -> None:
        if self.problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {', '.join(PROBLEMS)} (got {self.problem!r})")
        if self.kind not in THRESHOLD_KINDS:
            raise ValueError(f"threshold kind must be one of {THRESHOLD_KINDS} (got {self.kind!r})")
        if self.multi_label:
            if not self.thresholds:
                raise ValueError("a multi-label decision needs one threshold per label")
            if not all(0.0 < t < 1.0 for t in self.thresholds):
                raise ValueError(f"thresholds must lie in (0, 1) (got {list(self.thresholds)})")
        elif self.thresholds:
            raise ValueError("a single-label decision has no thresholds (the argmax decides)")

    @property
    def multi_label(self) -> bool:
        return self.problem == MULTI_LABEL

    @classmethod
    def multi(cls, num_labels: int, threshold: float = DEFAULT_THRESHOLD, kind: str = "default"):
        """Every label at one threshold."""
        return cls(MULTI_LABEL, (float(threshold),) * num_labels, kind)

    def check_labels(self, num_labels: int) -> None:
        if self.multi_label and len(self.thresholds) != num_labels:
            raise ValueError(
                f"{len(self.thresholds)} thresholds for {num_labels} labels in {DECISION_FILE}"
            )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax (single-label) or per-label sigmoid (multi-label) over the last axis."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.multi_label:
            return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """Boolean ``[..., L]``: the labels decided for each row of logits."""
        logits = np.asarray(logits)
        if self.multi_label:
            return self.probabilities(logits) >= np.asarray(self.thresholds, dtype=np.float32)
        top = logits.argmax(axis=-1)
        return np.arange(logits.shape[-1]) == np.expand_dims(top, -1)

    def to_dict(self) -> dict:
        out = {"problem": self.problem, "kind": self.kind}
        if self.multi_label:
            out["thresholds"] = [float(t) for t in self.thresholds]
        if self.chosen_on:
            out["chosen_on"] = self.chosen_on
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Decision:
        try:
            problem = data["problem"]
            kind = data.get("kind", "argmax" if problem == SINGLE_LABEL else "default")
            thresholds = tuple(float(t) for t in data.get("thresholds", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{DECISION_FILE}: not a decision ({exc})") from None
        return cls(problem, thresholds, kind, dict(data.get("chosen_on", {})))


def save_decision(directory: str | Path, decision: Decision) -> Path:
    path = Path(directory) / DECISION_FILE
    path.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    return path


def load_decision(directory: str | Path, num_labels: int | None = None) -> Decision:
    """The decision saved in ``directory`` (single-label where there is none)."""
    path = Path(directory) / DECISION_FILE
    if not path.is_file():
        return Decision()
    try:
        decision = Decision.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if num_labels is not None:
        decision.check_labels(num_labels)
    return decision


def _f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of boolean arrays, counted over every cell (micro over labels)."""
    tp = float((truth & predicted).sum())
    denominator = float(truth.sum() + predicted.sum())
    return 2 * tp / denominator if denominator else 0.0


def choose_thresholds(
    probabilities: np.ndarray, truth: np.ndarray, kind: str = "global"
) -> Decision:
    """Thresholds that maximise F1 on validation data: ``probabilities`` and ``truth`` are
    ``[N, L]`` (sigmoids, booleans). ``global``: the one threshold with the best micro-F1;
    ``per-label``: each label its own best F1, where a label has no positive document in
    the data it keeps the global threshold (its F1 cannot be measured). Ties go to the
    threshold nearest 0.5. ``chosen_on`` records the documents and both micro-F1s."""
    if kind not in ("global", "per-label"):
        raise ValueError(f"threshold kind must be 'global' or 'per-label' (got {kind!r})")
    probabilities = np.asarray(probabilities, dtype=np.float32)
    truth = np.asarray(truth, dtype=bool)
    grid = sorted(THRESHOLD_GRID, key=lambda t: abs(t - DEFAULT_THRESHOLD))

    def best(p: np.ndarray, y: np.ndarray) -> float:
        scores = [_f1(y, p >= t) for t in grid]
        return grid[int(np.argmax(scores))]  # argmax keeps the first: nearest 0.5 on a tie

    global_t = best(probabilities, truth)
    per_label = [
        best(probabilities[:, k], truth[:, k]) if truth[:, k].any() else global_t
        for k in range(truth.shape[1])
    ]
    chosen_on = {
        "documents": int(len(truth)),
        "global_threshold": float(global_t),
        "micro_f1_global": round(_f1(truth, probabilities >= global_t), 6),
        "micro_f1_per_label": round(_f1(truth, probabilities >= np.asarray(per_label)), 6),
    }
    thresholds = per_label if kind == "per-label" else [global_t] * truth.shape[1]
    return Decision(MULTI_LABEL, tuple(float(t) for t in thresholds), kind, chosen_on)
