"""Parity report: the exported ONNX pipeline against the PyTorch reference on real text.

Every export ends here and fails loudly past tolerance. Tolerances are on max |delta| of
document logits:

* fp32: 1e-4 (same math, different kernels);
* fp16 and int8: bounds measured on the real all-MiniLM-L6-v2 weights with a seeded
  classifier (logits of order 1-5) over the parity documents, then given headroom; see
  README.md "Precision and parity" for the measured values.

The decision rule is checked too: PROBABILITIES (softmax, or the sigmoids of a multi-label
model) and CHUNK_WEIGHTS are reported as max |delta|, and the graph's DECISIONS (thresholds
baked in at export) must equal the reference's ``Decision.decide``; a flipped decision is
only accepted where the reference itself sits on the edge (single-label: top two logits
within twice the tolerance; multi-label: a probability within the tolerance of its
threshold).

The bounds are ``longdoc.presets.TOLERANCES`` (re-exported here as ``TOLERANCES``): the
GPU checks compare against the same numbers without importing onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from longdoc import corpus
from longdoc.checkpoint import LoadedModel
from longdoc.contract import ENCODER, ONNX_FILE
from longdoc.presets import TOLERANCES
from longdoc.reference import ReferenceClassifier
from longdoc.runtime import OnnxPipeline

# Words per parity document: 1 window up to ~10 windows of 512 tokens.
DEFAULT_LENGTHS = (25, 300, 1_000, 3_200)


class ParityError(RuntimeError):
    """The exported files disagree with PyTorch beyond the tolerance."""


@dataclass
class ParityReport:
    precision: str
    documents: int
    chunks: list[int]
    max_abs_logits: float
    max_abs_chunk_logits: float
    argmax_agreement: float
    tolerance: float
    passed: bool
    checked: str = ""  # which graph ran (the precision above is that graph's)
    problem: str = "single-label"  # the decision rule checked (longdoc.decision)
    max_abs_probabilities: float = 0.0
    max_abs_chunk_weights: float = 0.0
    decisions_agreement: float = 1.0  # documents whose decided label sets are equal

    def summary(self) -> str:
        return (
            f"parity {self.precision}{f' [{self.checked}]' if self.checked else ''}: "
            f"{self.documents} documents ({min(self.chunks)}-"
            f"{max(self.chunks)} chunks), max |delta logits| {self.max_abs_logits:.3g} "
            f"(tolerance {self.tolerance:g}), max |delta chunk logits| "
            f"{self.max_abs_chunk_logits:.3g}, argmax agreement {self.argmax_agreement:.0%}, "
            f"{self.problem} decisions agreement {self.decisions_agreement:.0%} (max |delta "
            f"probabilities| {self.max_abs_probabilities:.3g})"
            f" -> {'PASS' if self.passed else 'FAIL'}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def parity_texts(lengths: tuple[int, ...] = DEFAULT_LENGTHS, seed: int = 7) -> list[str]:
    return corpus.documents(list(lengths), seed=seed)


def _margin(logits: np.ndarray) -> float:
    top = np.sort(logits)[::-1]
    return float(top[0] - top[1]) if top.size > 1 else float("inf")


def check(
    model: LoadedModel,
    repository: Path,
    precision: str,
    texts: list[str] | None = None,
    tolerance: float | None = None,
    checked: str = "",
    encoder: Path | None = None,
) -> ParityReport:
    """Compare the repository's ONNX files (in-process onnxruntime) with PyTorch.
    ``encoder``: the encoder graph to check (default: the repository's ``model.onnx``,
    whatever this CPU would serve)."""
    texts = texts or parity_texts()
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    encoder = encoder or Path(repository) / ENCODER / "1" / ONNX_FILE
    # Both through the classifier interface: the reference on the model, the exported files.
    expected = ReferenceClassifier(model).classify(texts)
    got = OnnxPipeline(repository, encoder=encoder).classify(texts)
    delta = max(float(np.abs(e.logits - g.logits).max()) for e, g in zip(expected, got))
    delta_chunks = max(
        float(np.abs(e.chunk_logits - g.chunk_logits).max()) for e, g in zip(expected, got)
    )
    same = [int(np.argmax(e.logits) == np.argmax(g.logits)) for e, g in zip(expected, got)]
    agree = float(np.mean(same))
    # A flipped decision is only acceptable where the reference itself is undecided: its
    # top two logits closer than the drift allowed on each.
    explained = all(s or _margin(e.logits) <= 2 * tolerance for s, e in zip(same, expected))
    decision = model.decision
    delta_probabilities = max(
        float(np.abs(e.probabilities - g.probabilities).max()) for e, g in zip(expected, got)
    )
    delta_weights = max(
        float(np.abs(e.chunk_weights - g.chunk_weights).max()) for e, g in zip(expected, got)
    )
    equal = [
        bool(np.array_equal(e.decisions, np.asarray(g.decisions, dtype=bool)))
        for e, g in zip(expected, got)
    ]
    if decision.multi_label:
        thresholds = np.asarray(decision.thresholds, dtype=np.float32)
        on_edge = [
            bool(
                (np.abs(e.probabilities - thresholds) <= tolerance)[
                    e.decisions != g.decisions
                ].all()
            )
            for e, g in zip(expected, got)
        ]
    else:
        on_edge = [_margin(e.logits) <= 2 * tolerance for e in expected]
    decisions_explained = all(s or edge for s, edge in zip(equal, on_edge))
    passed = delta <= tolerance and explained and decisions_explained
    return ParityReport(
        precision,
        len(texts),
        [e.num_chunks for e in expected],
        delta,
        delta_chunks,
        agree,
        tolerance,
        passed,
        checked,
        decision.problem,
        delta_probabilities,
        delta_weights,
        float(np.mean(equal)),
    )
