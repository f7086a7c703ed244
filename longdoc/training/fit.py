"""The one fit loop every trainer runs: epochs, history, best state, early stopping.

A trainer says how to run one epoch (its batches, its optimizer, its windows) and how to
score the validation data; this loop does the rest the same way for all of them, so the
frozen and end-to-end regimes cannot drift apart in what "best epoch" or "patience" mean:

* each epoch adds a row to the history: ``epoch``, ``steps`` (optimizer steps so far),
  ``train_loss`` (mean over the epoch's batches), ``seconds`` (since the loop started) and,
  with validation data, ``validation_accuracy`` and ``validation_macro_f1`` (multi-label:
  ``validation_micro_f1`` and ``validation_macro_f1``, each label decided at 0.5);
* the best epoch is the one with the highest validation macro-F1 (then accuracy, then the
  earlier epoch; multi-label: micro-F1, then macro-F1, then the earlier epoch), or without
  validation data the lowest training loss; its row is marked ``best`` and its state is
  what the model holds when the loop returns;
* with validation data, ``patience`` epochs without a better score stop the run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from longdoc.metrics import classification_report, multilabel_report


@dataclass
class Epoch:
    """What one pass over the training data reports to the loop."""

    losses: list[float]  # one per batch
    steps: int  # optimizer steps so far, over all epochs
    stop: bool = False  # a step budget (--max-steps) is spent: no further epoch


def validation_scores(pred: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """The two figures each epoch records and model choice uses: accuracy and macro-F1 of
    label indices, or for boolean ``[N, L]`` label sets (multi-label) micro- and macro-F1."""
    if np.asarray(y).ndim == 2:
        report = multilabel_report(y, pred, labels)
        return {"micro_f1": report["micro_f1"], "macro_f1": report["macro_f1"]}
    report = classification_report(y, pred, labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def score(row: dict) -> tuple:
    """How epochs compare (higher is better)."""
    if "validation_micro_f1" in row:
        return (row["validation_micro_f1"], row["validation_macro_f1"], -row["epoch"])
    if "validation_macro_f1" in row:
        return (row["validation_macro_f1"], row["validation_accuracy"], -row["epoch"])
    return (-row["train_loss"],)


def epoch_line(row: dict) -> str:
    """The line logged after each epoch."""
    text = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}"
    if "validation_accuracy" in row:
        text += (
            f", validation accuracy {row['validation_accuracy']:.3f} "
            f"macro-F1 {row['validation_macro_f1']:.3f}"
        )
    elif "validation_micro_f1" in row:
        text += (
            f", validation micro-F1 {row['validation_micro_f1']:.3f} "
            f"macro-F1 {row['validation_macro_f1']:.3f}"
        )
    return text + f" ({row['seconds']:.1f} s)"


def fit(
    run_epoch: Callable[[int], Epoch],
    *,
    epochs: int,
    patience: int,
    get_state: Callable[[], Any],
    set_state: Callable[[Any], None],
    validate: Callable[[], dict] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run up to ``epochs`` epochs and leave the model in its best epoch's state.

    ``run_epoch(epoch)`` trains one epoch (1-based); ``validate()`` returns
    :func:`validation_scores` on the validation data (None: no validation data);
    ``get_state``/``set_state`` read and restore the model's weights (a copy of the best
    is kept). Returns the history, one row per epoch run."""
    history: list[dict] = []
    best: tuple | None = None
    best_state: Any = None
    stale = 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        outcome = run_epoch(epoch)
        row = {
            "epoch": epoch,
            "steps": outcome.steps,
            "train_loss": float(np.mean(outcome.losses)),
            "seconds": round(time.perf_counter() - started, 2),
        }
        if validate is not None:
            row.update({f"validation_{k}": v for k, v in validate().items()})
        history.append(row)
        log(epoch_line(row))
        current = score(row)
        if best is None or current > best:
            best, best_state, stale = current, copy.deepcopy(get_state()), 0
            row["best"] = True
        else:
            stale += 1
        if validate is not None and stale >= patience:
            log(f"early stopping: no validation gain for {patience} epochs")
            break
        if outcome.stop:
            break
    if best_state is not None:
        set_state(best_state)
    return history
