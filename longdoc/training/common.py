"""What both neural trainers share: seeding, the device, batching, the head to train, the
validation split.

Kept apart from the trainers so that a seeded frozen run and a seeded end-to-end run start
from the same head weights and draw their windows and batches the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longdoc.contract import LOGIT_HEADS
from longdoc.data import Example
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
    every class is scored and every class is still trained on."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    held: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        n = len(members)
        k = min(max(round(fraction * n), 1 if n >= 2 else 0), n - 1)
        held.extend(rng.permutation(members)[:k].tolist())
    held_set = set(held)
    train = np.asarray([i for i in range(len(examples)) if i not in held_set], dtype=np.int64)
    return train, np.asarray(sorted(held), dtype=np.int64)


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
