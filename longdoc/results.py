"""The one classifier interface: ``classify(texts) -> list[DocumentResult]``.

Whatever computes the logits implements :class:`Classifier`: the PyTorch reference on a
checkpoint (``longdoc.reference.ReferenceClassifier``), the in-process onnxruntime pipeline
on a repository (``longdoc.runtime.OnnxPipeline``), a running server through the client
library (``longdoc.client.classifier.ServerClassifier``) and the TF-IDF baseline
(``longdoc.tfidf.TfidfClassifier``). ``longdoc.classifiers.open_classifier`` picks one
from a checkpoint, a repository or a server address. Evaluation, export's parity check,
the benchmark's baselines and the demo go through it.

numpy only, even lazily: the Triton stubs (``longdoc.runtime``) and the client-only install
import this module, so it must not reach torch or onnxruntime (the factory, which imports
every implementation, lives apart for that reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class DocumentResult:
    """One document's decision, with the per-chunk scores behind it."""

    logits: np.ndarray  # [L], label order of the classifier's `labels`
    probabilities: np.ndarray  # [L]
    chunk_logits: np.ndarray  # [n_chunks, L]
    spans: np.ndarray  # [n_chunks, 2] character offsets of each window's body
    num_tokens: int | None = None  # document tokens; None where the source does not say
    total_chunks: int | None = None  # windows in the whole document (before a cap)
    chunk_weights: np.ndarray | None = None  # [n_chunks, L] each window's weight per label
    decisions: np.ndarray | None = None  # [L] bool: the labels decided (longdoc.decision)

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_logits.shape[0])

    @property
    def index(self) -> int:
        """The top label's index (the single-label decision)."""
        return int(np.argmax(self.logits))

    @property
    def decided(self) -> list[int]:
        """The indices of the labels decided: multi-label, every label over its threshold
        (possibly none); single-label, the argmax (also where a source gives no decisions)."""
        if self.decisions is None:
            return [self.index]
        return [int(i) for i in np.flatnonzero(np.asarray(self.decisions))]

    def best_chunk(self, label: int | None = None) -> int:
        """The decisive window for ``label`` (default: the top label): see ``best_chunk``."""
        return best_chunk(
            self.chunk_logits, self.chunk_weights, self.index if label is None else label
        )


class DocumentError(ValueError):
    """A document a classifier cannot classify (``index``: its place in ``texts``)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@runtime_checkable
class Classifier(Protocol):
    """Text in, decisions out. ``classify`` is batched (implementations may share encoder
    calls between documents), tokenizes each document once, returns one result per text
    in order, and raises :class:`DocumentError` for a document it cannot classify."""

    labels: list[str]

    def classify(self, texts: Sequence[str]) -> list[DocumentResult]: ...


def best_chunk(chunk_logits: np.ndarray, chunk_weights: np.ndarray | None, label: int) -> int:
    """The window that weighs most in ``label``'s document score (``CHUNK_WEIGHTS``: the
    attention head's learned weight, the maximum's window for logits-max); among windows of
    equal weight (every window, for the mean heads), the one whose own score is highest."""
    scores = np.asarray(chunk_logits)[:, label]
    if chunk_weights is None:
        return int(np.argmax(scores))
    weights = np.asarray(chunk_weights)[:, label]
    return int(np.lexsort((-scores, -weights))[0])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
