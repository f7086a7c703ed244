"""The non-neural whole-text baseline: TF-IDF (word 1-2 grams) + logistic regression.

It reads the whole document at once with no window limit, so it is the bar a windowed
encoder has to clear; ``longdoc evaluate --checkpoint`` reads its ``tfidf.npz`` (arrays
only: ``longdoc.tfidf``) like any other checkpoint. Multi-label: one logistic regression
per label (``longdoc.tfidf.OneVsRest``), thresholds chosen on the validation split as for
the neural heads (``common.choose_decision``), saved in ``decision.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from longdoc.data import Example
from longdoc.decision import MULTI_LABEL, SINGLE_LABEL
from longdoc.tfidf import OneVsRest, make_pipeline, save_tfidf
from longdoc.training.common import choose_decision, label_indices, multi_hot, predictions
from longdoc.training.config import TrainConfig
from longdoc.training.fit import epoch_line, validation_scores


def train_tfidf(
    cfg: TrainConfig,
    train_ex: list[Example],
    val_ex: list[Example],
    labels: list[str],
    log: Callable[[str], None],
    problem: str = SINGLE_LABEL,
) -> dict:
    """Fit the pipeline (multi-label: one regression per label), choose the decision, write
    ``tfidf.npz`` (and ``decision.json``); the history is one row (one "epoch")."""
    started = time.perf_counter()
    texts = [e.text for e in train_ex]
    val_logits = None
    if problem == MULTI_LABEL:
        model = OneVsRest.fit(texts, multi_hot(train_ex, labels))
    else:
        model = make_pipeline()
        model.fit(texts, label_indices(train_ex, labels))
    row = {
        "epoch": 1,
        "steps": 1,
        "train_loss": 0.0,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if val_ex:
        val_texts = [e.text for e in val_ex]
        if problem == MULTI_LABEL:
            val_logits = model.decision_function(val_texts)
            pred, truth = predictions(val_logits, problem), multi_hot(val_ex, labels)
        else:
            pred, truth = model.predict(val_texts), label_indices(val_ex, labels)
        scores = validation_scores(pred, truth, labels)
        row.update({f"validation_{k}": v for k, v in scores.items()})
    log(epoch_line(row))
    val_truth = multi_hot(val_ex, labels) if val_ex else None
    decision = choose_decision(problem, labels, val_logits, val_truth, cfg.thresholds, log)
    save_tfidf(model, labels, cfg.output, decision)
    return {"history": [row], "train_seconds": row["seconds"], "decision": decision}
