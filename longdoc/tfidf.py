"""The TF-IDF baseline as a classifier (``longdoc.results.Classifier``): the pipeline that
``longdoc train --baseline tfidf`` fits (``longdoc.training.tfidf``), saved and loaded here,
applied to whole documents (no windows: one "chunk" per document).

The saved form is arrays only (``tfidf.npz``: the vocabulary in column order, the IDF
weights, the logistic regression's coefficients, the labels), read with
``allow_pickle=False``: evaluating a checkpoint from elsewhere can never run its code,
which ``pickle.load`` of a fitted pipeline would (issue #18).

Multi-label: one logistic regression per label (one-vs-rest) over the shared TF-IDF
features; ``tfidf.npz`` then holds ``problem = "multi-label"`` and one coefficient row and
intercept per label, the logits are the regressions' decision functions (so the decision's
sigmoid is each label's probability), and the thresholds are ``decision.json`` beside it
(``longdoc.decision``, as in a neural checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from longdoc.contract import DECISION_FILE, TFIDF_FILE
from longdoc.decision import MULTI_LABEL, SINGLE_LABEL, Decision, load_decision, save_decision
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


# A label on every training document (or none) has no regression to fit: its logit is this
# constant (sigmoid 0.99995 or 0.00005).
CONSTANT_LOGIT = 10.0


class OneVsRest:
    """The multi-label baseline: the TF-IDF vectorizer and one logistic regression per
    label, kept as arrays (``coef [L, F]``, ``intercept [L]``); ``decision_function`` gives
    the logits ``[N, L]``."""

    def __init__(self, vectorizer, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.vectorizer = vectorizer
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    @classmethod
    def fit(cls, texts: list[str], truth: np.ndarray) -> OneVsRest:
        """Fit on boolean ``[N, L]`` label sets."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        truth = np.asarray(truth, dtype=bool)
        vectorizer = TfidfVectorizer(**VECTORIZER)
        features = vectorizer.fit_transform(texts)
        coef = np.zeros((truth.shape[1], features.shape[1]))
        intercept = np.zeros(truth.shape[1])
        for k in range(truth.shape[1]):
            column = truth[:, k]
            if column.all() or not column.any():
                intercept[k] = CONSTANT_LOGIT if column.all() else -CONSTANT_LOGIT
                continue
            regression = LogisticRegression(**REGRESSION).fit(features, column.astype(int))
            coef[k], intercept[k] = regression.coef_[0], regression.intercept_[0]
        return cls(vectorizer, coef, intercept)

    def decision_function(self, texts: list[str]) -> np.ndarray:
        features = self.vectorizer.transform(list(texts))
        return np.asarray(features @ self.coef.T) + self.intercept


def save_tfidf(
    pipeline, labels: list[str], directory: Path, decision: Decision | None = None
) -> Path:
    """Write the fitted ``pipeline`` (or :class:`OneVsRest` model) as arrays to
    ``directory/tfidf.npz``; a multi-label ``decision`` goes to ``decision.json``."""
    multi = isinstance(pipeline, OneVsRest)
    if multi:
        vectorizer = pipeline.vectorizer
        fitted = {
            "problem": np.array(MULTI_LABEL),
            "classes": np.arange(len(labels)),
            "coef": pipeline.coef,
            "intercept": pipeline.intercept,
        }
    else:
        vectorizer, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
        fitted = {
            "classes": regression.classes_,
            "coef": regression.coef_,
            "intercept": regression.intercept_,
        }
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
            **fitted,
        )
    if multi:
        save_decision(directory, decision or Decision.multi(len(labels)))
    else:
        (directory / DECISION_FILE).unlink(missing_ok=True)  # a single-label model has none
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
    problem = str(arrays["problem"]) if "problem" in arrays else SINGLE_LABEL
    if problem == MULTI_LABEL:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(**VECTORIZER)
        vectorizer.vocabulary_ = {term: i for i, term in enumerate(arrays["terms"].tolist())}
        vectorizer.idf_ = arrays["idf"]
        return OneVsRest(vectorizer, arrays["coef"], arrays["intercept"]), arrays["labels"].tolist()
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
    """TF-IDF + logistic regression. Single-label: the logits are log-probabilities (their
    softmax is the regression's probabilities). Multi-label: the per-label regressions'
    decision functions (their sigmoids are the probabilities), decided with the thresholds
    of ``decision.json``."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.pipeline, self.labels = load_pipeline(Path(checkpoint) / TFIDF_FILE)
        if isinstance(self.pipeline, OneVsRest):
            self.decision = load_decision(checkpoint, len(self.labels))
            if not self.decision.multi_label:  # a multi-label file without its thresholds
                self.decision = Decision.multi(len(self.labels))
        else:
            self.decision = Decision()

    def classify(self, texts: Sequence[str]) -> list[DocumentResult]:
        if not texts:
            return []
        if isinstance(self.pipeline, OneVsRest):
            logits = self.pipeline.decision_function(list(texts)).astype(np.float32)
            proba = self.decision.probabilities(logits)
        else:
            proba = self.pipeline.predict_proba(list(texts)).astype(np.float32)
            logits = np.log(np.clip(proba, 1e-12, None)).astype(np.float32)
        decisions = self.decision.decide(logits)
        return [
            DocumentResult(
                logits=row,
                probabilities=p,
                chunk_logits=row[None, :],
                spans=np.asarray([[0, len(text)]], dtype=np.int64),
                decisions=d,
            )
            for row, p, d, text in zip(logits, proba, decisions, texts, strict=True)
        ]
