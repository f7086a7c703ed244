"""What both neural trainers share: seeding, the device, batching, the head to train, the
validation split.

Kept apart from the trainers so that a seeded frozen run and a seeded end-to-end run start
from the same head weights and draw their windows and batches the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longdoc.contract import LOGIT_HEADS
from longdoc.data import Example
from longdoc.decision import MULTI_LABEL, Decision, choose_thresholds
from longdoc.training.config import TrainConfig


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and every CUDA device) from one seed."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(name: str) -> str:
    """``auto``: CUDA when there is one, else the CPU; a CUDA request without one fails."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def encoder_tokenizer(encoder_dir: Path) -> Path:
    """The directory whose ``tokenizer.json`` goes with an encoder (`checkpoint`'s rule)."""
    from longdoc.checkpoint import encoder_tokenizer_dir

    return encoder_tokenizer_dir(encoder_dir)


def epoch_bar(epoch: int, cfg: TrainConfig, batches: int):
    """One epoch's progress bar. The trainers call ``update(1)`` after each batch and only
    then set the loss: a bar iterating its batches itself updates its count lazily, and
    showed ``0/8`` while the loss beside it changed."""
    from tqdm import tqdm

    return tqdm(
        total=batches,
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        disable=not cfg.progress,
        leave=False,
    )


def label_indices(examples: list[Example], labels: list[str]) -> np.ndarray:
    """Each example's label as its index in ``labels`` (the model's output order)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.asarray([index[e.label] for e in examples])


def multi_hot(examples: list[Example], labels: list[str]) -> np.ndarray:
    """Boolean ``[N, L]``: each example's label set over ``labels`` (a single-label example
    is a set of one)."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(examples), len(labels)), dtype=bool)
    for row, e in enumerate(examples):
        out[row, [index[label] for label in e.label_set]] = True
    return out


def targets(examples: list[Example], labels: list[str], problem: str) -> np.ndarray:
    """What the loss compares the logits with: label indices (single-label) or a float
    multi-hot ``[N, L]`` (multi-label)."""
    if problem == MULTI_LABEL:
        return multi_hot(examples, labels).astype(np.float32)
    return label_indices(examples, labels)


def loss_function(problem: str):
    """``loss(logits [B, L], target)``: cross-entropy over the softmax (single-label), or
    a sigmoid per label against the multi-hot target (multi-label, mean over cells)."""
    import torch

    if problem == MULTI_LABEL:
        return torch.nn.functional.binary_cross_entropy_with_logits
    return torch.nn.functional.cross_entropy


def predictions(logits: np.ndarray, problem: str) -> np.ndarray:
    """What an epoch is scored on: argmax indices (single-label) or each label at the
    default threshold 0.5 (a logit at or over 0) for multi-label."""
    if problem == MULTI_LABEL:
        return np.asarray(logits) >= 0.0
    return np.asarray(logits).argmax(axis=-1)


def choose_decision(
    problem: str,
    labels: list[str],
    validation_logits: np.ndarray | None,
    validation_truth: np.ndarray | None,
    kind: str,
    log: Callable[[str], None],
) -> Decision:
    """How the trained model's logits become labels. Single-label: the argmax. Multi-label:
    thresholds chosen on the validation split (``kind`` global or per-label; ``chosen_on``
    records both candidates' validation micro-F1), or 0.5 for every label without
    validation data (said in the log)."""
    if problem != MULTI_LABEL:
        return Decision()
    if validation_logits is None or not len(validation_logits):
        log("multi-label without validation data: every label's threshold is 0.5 (default)")
        return Decision.multi(len(labels))
    probabilities = Decision.multi(len(labels)).probabilities(validation_logits)
    decision = choose_thresholds(probabilities, validation_truth, kind)
    seen = decision.chosen_on
    shown = (
        f"{decision.thresholds[0]:.2f}"
        if kind == "global"
        else ", ".join(f"{label} {t:.2f}" for label, t in zip(labels, decision.thresholds))
    )
    log(
        f"thresholds ({kind}, chosen on {seen['documents']} validation documents): {shown}; "
        f"validation micro-F1 {seen['micro_f1_global']:.3f} global, "
        f"{seen['micro_f1_per_label']:.3f} per-label"
    )
    return decision


def sample_windows(n: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``n`` window indices, in document order (all when k is None or >= n)."""
    if k is None or n <= k:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def length_batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list:
    """Shuffled batches of documents with similar window counts: a batch is padded to its
    longest document, and random batches would be mostly padding (a 64-window document
    in nearly every one). Ties are broken at random, batch order is shuffled."""
    order = np.lexsort((rng.random(len(lengths)), np.asarray(lengths)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def build_head_module(head: str, hidden: int, num_labels: int, cfg: TrainConfig):
    """The trainable part over window vectors, seeded: for the logits heads a
    :class:`~longdoc.heads.LogitsHead` (the classifier of a BertForSequenceClassification on
    the pooled [CLS], then mean/max); for the others their aggregator, with the run's
    dropout."""
    import torch
    from torch import nn

    from longdoc.heads import LogitsHead, make_aggregator

    torch.manual_seed(cfg.seed)
    if head in LOGIT_HEADS:
        return LogitsHead(hidden, num_labels, head, cfg.dropout)
    module = make_aggregator(head, hidden, num_labels, **cfg.head_options())
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
    return module


@dataclass
class Split:
    """The documents a run trains on and scores epochs on. When the validation documents
    were held out of ``--train``, ``pool`` is the training data as read and the indices
    say which are which: frozen features are computed (and cached) for ``pool``, so a run
    with a held-out slice shares its cache with every other run on the same data."""

    train: list[Example]
    validation: list[Example]
    pool: list[Example] | None = None
    train_index: np.ndarray | None = None
    validation_index: np.ndarray | None = None


def stratified_holdout(
    examples: list[Example], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, held-out indices)``: about ``fraction`` of each label's documents
    held out (at least one where a label has two or more, never its last one), so that
    every class is scored and every class is still trained on.

    Multi-label documents (``Example.labels``) rarely share their exact label set, so they
    are not grouped by set (most groups would be single documents, never held out): in a
    seeded random order, a document is held out while each of its labels still has
    held-out budget (the same per-label share as above) and keeps another document in
    training."""
    rng = np.random.default_rng(seed)
    if any(e.labels for e in examples):
        held = _label_set_holdout(examples, fraction, rng)
    else:
        held = _single_label_holdout(examples, fraction, rng)
    held_set = set(held)
    train = np.asarray([i for i in range(len(examples)) if i not in held_set], dtype=np.int64)
    return train, np.asarray(sorted(held), dtype=np.int64)


def _share(fraction: float, n: int) -> int:
    """How many of a label's ``n`` documents to hold out: at least one where it has two or
    more, never all."""
    return min(max(round(fraction * n), 1 if n >= 2 else 0), n - 1)


def _single_label_holdout(examples: list[Example], fraction: float, rng) -> list[int]:
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    held: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        held.extend(rng.permutation(members)[: _share(fraction, len(members))].tolist())
    return held


def _label_set_holdout(examples: list[Example], fraction: float, rng) -> list[int]:
    counts: dict[str, int] = {}
    for e in examples:
        for label in e.label_set:
            counts[label] = counts.get(label, 0) + 1
    budget = {label: _share(fraction, n) for label, n in counts.items()}
    in_training = dict(counts)
    held: list[int] = []
    for i in rng.permutation(len(examples)).tolist():
        labels = examples[i].label_set
        if all(budget[x] > 0 and in_training[x] > 1 for x in labels):
            held.append(i)
            for x in labels:
                budget[x] -= 1
                in_training[x] -= 1
    return held


def holdout_split(examples: list[Example], fraction: float, seed: int) -> Split:
    """A :class:`Split` with a stratified slice of ``examples`` held out for validation."""
    train_index, val_index = stratified_holdout(examples, fraction, seed)
    return Split(
        train=[examples[i] for i in train_index],
        validation=[examples[i] for i in val_index],
        pool=examples,
        train_index=train_index,
        validation_index=val_index,
    )
