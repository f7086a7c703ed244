"""The TF-IDF baseline as a classifier (``longdoc.results.Classifier``): the pipeline that
``longdoc train --baseline tfidf`` fitted and saved (``longdoc.training.tfidf``), loaded and
applied to whole documents (no windows: one "chunk" per document)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from longdoc.contract import TFIDF_FILE
from longdoc.results import DocumentResult


def is_tfidf(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` holds the TF-IDF baseline rather than a neural model."""
    return (Path(checkpoint) / TFIDF_FILE).is_file()


class TfidfClassifier:
    """TF-IDF + logistic regression; logits are log-probabilities."""

    def __init__(self, checkpoint: str | Path) -> None:
        with (Path(checkpoint) / TFIDF_FILE).open("rb") as f:
            saved = pickle.load(f)  # a file `longdoc train` wrote: trusted
        self.pipeline = saved["pipeline"]
        self.labels: list[str] = list(saved["labels"])

    def classify(self, texts: Sequence[str]) -> list[DocumentResult]:
        if not texts:
            return []
        proba = self.pipeline.predict_proba(list(texts)).astype(np.float32)
        logits = np.log(np.clip(proba, 1e-12, None)).astype(np.float32)
        return [
            DocumentResult(
                logits=row,
                probabilities=p,
                chunk_logits=row[None, :],
                spans=np.asarray([[0, len(text)]], dtype=np.int64),
            )
            for row, p, text in zip(logits, proba, texts, strict=True)
        ]
