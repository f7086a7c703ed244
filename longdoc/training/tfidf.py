"""The non-neural whole-text baseline: TF-IDF (word 1-2 grams) + logistic regression.

It reads the whole document at once with no window limit, so it is the bar a windowed
encoder has to clear; ``longdoc evaluate --checkpoint`` reads its ``tfidf.npz`` (arrays
only: ``longdoc.tfidf``) like any other checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from longdoc.data import Example
from longdoc.tfidf import make_pipeline, save_tfidf
from longdoc.training.common import label_indices
from longdoc.training.config import TrainConfig
from longdoc.training.fit import epoch_line, validation_scores


def train_tfidf(
    cfg: TrainConfig,
    train_ex: list[Example],
    val_ex: list[Example],
    labels: list[str],
    log: Callable[[str], None],
) -> dict:
    """Fit the pipeline, write ``tfidf.npz``; the history is one row (one "epoch")."""
    started = time.perf_counter()
    model = make_pipeline()
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
    save_tfidf(model, labels, cfg.output)
    return {"history": [row], "train_seconds": row["seconds"]}
