"""The non-neural whole-text baseline: TF-IDF (word 1-2 grams) + logistic regression.

It reads the whole document at once with no window limit, so it is the bar a windowed
encoder has to clear; ``longdoc evaluate --checkpoint`` reads its ``tfidf.pkl`` like any
other checkpoint.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

from longdoc.data import Example
from longdoc.training.common import label_indices
from longdoc.training.config import TFIDF_FILE, TrainConfig
from longdoc.training.fit import epoch_line, validation_scores


def train_tfidf(
    cfg: TrainConfig,
    train_ex: list[Example],
    val_ex: list[Example],
    labels: list[str],
    log: Callable[[str], None],
) -> dict:
    """Fit the pipeline, write ``tfidf.pkl``; the history is one row (one "epoch")."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    started = time.perf_counter()
    model = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=200_000),
        LogisticRegression(C=10.0, max_iter=3000),
    )
    model.fit([e.text for e in train_ex], label_indices(train_ex, labels))
    row = {
        "epoch": 1,
        "steps": 1,
        "train_loss": 0.0,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if val_ex:
        pred = model.predict([e.text for e in val_ex])
        scores = validation_scores(pred, label_indices(val_ex, labels), labels)
        row.update({f"validation_{k}": v for k, v in scores.items()})
    log(epoch_line(row))
    cfg.output.mkdir(parents=True, exist_ok=True)
    with (cfg.output / TFIDF_FILE).open("wb") as f:
        pickle.dump({"pipeline": model, "labels": labels}, f)
    return {"history": [row], "train_seconds": row["seconds"]}
