"""The TF-IDF baseline as a classifier (``longdoc.results.Classifier``): the pipeline that
``longdoc train --baseline tfidf`` fits (``longdoc.training.tfidf``), saved and loaded here,
applied to whole documents (no windows: one "chunk" per document).

The saved form is arrays only (``tfidf.npz``: the vocabulary in column order, the IDF
weights, the logistic regression's coefficients, the labels), read with
``allow_pickle=False``: evaluating a checkpoint from elsewhere can never run its code,
which ``pickle.load`` of a fitted pipeline would (issue #18).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from longdoc.contract import TFIDF_FILE
from longdoc.results import DocumentResult

# The pipeline's settings: `longdoc.training.tfidf` fits with them, `TfidfClassifier`
# rebuilds with them (the fitted state comes from the arrays).
VECTORIZER = {"sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2, "max_features": 200_000}
REGRESSION = {"C": 10.0, "max_iter": 3000}
FORMAT = 1


def make_pipeline():
    """The unfitted TF-IDF (word 1-2 grams) + logistic regression pipeline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline as sk_pipeline

    return sk_pipeline(TfidfVectorizer(**VECTORIZER), LogisticRegression(**REGRESSION))


def save_tfidf(pipeline, labels: list[str], directory: Path) -> Path:
    """Write the fitted ``pipeline`` as arrays to ``directory/tfidf.npz``."""
    vectorizer, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
    vocabulary = vectorizer.vocabulary_
    terms = np.array(sorted(vocabulary, key=vocabulary.get), dtype=str)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TFIDF_FILE
    with path.open("wb") as f:
        np.savez_compressed(
            f,
            format=np.array(FORMAT),
            labels=np.array(labels, dtype=str),
            terms=terms,
            idf=vectorizer.idf_,
            classes=regression.classes_,
            coef=regression.coef_,
            intercept=regression.intercept_,
        )
    return path


def load_pipeline(path: Path) -> tuple[object, list[str]]:
    """The fitted pipeline and labels from ``tfidf.npz`` (arrays only, no code)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a TF-IDF baseline file ({exc})") from None
    if int(arrays.get("format", -1)) != FORMAT:
        raise ValueError(f"{path}: unknown TF-IDF file format {arrays.get('format')}")
    pipeline = make_pipeline()
    vectorizer, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
    vectorizer.vocabulary_ = {term: i for i, term in enumerate(arrays["terms"].tolist())}
    vectorizer.idf_ = arrays["idf"]
    regression.classes_ = arrays["classes"]
    regression.coef_ = arrays["coef"]
    regression.intercept_ = arrays["intercept"]
    return pipeline, arrays["labels"].tolist()


def is_tfidf(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` holds the TF-IDF baseline rather than a neural model."""
    return (Path(checkpoint) / TFIDF_FILE).is_file()


class TfidfClassifier:
    """TF-IDF + logistic regression; logits are log-probabilities."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.pipeline, self.labels = load_pipeline(Path(checkpoint) / TFIDF_FILE)

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
