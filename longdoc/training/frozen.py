"""Frozen-encoder training: the head learns on cached window vectors.

The encoder runs once per window (``longdoc.features``, cached on disk and keyed by
encoder, chunking and data), so every epoch afterwards is a pass over small arrays: minutes
on 2 CPU cores, and heads with different caps or seeds reuse one cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from longdoc.contract import LOGIT_HEADS
from longdoc.data import Example
from longdoc.decision import MULTI_LABEL, SINGLE_LABEL
from longdoc.training.common import (
    Split,
    build_head_module,
    epoch_bar,
    label_indices,
    length_batches,
    loss_function,
    multi_hot,
    predictions,
    resolve_device,
    sample_windows,
    seed_everything,
    targets,
)
from longdoc.training.config import TrainConfig
from longdoc.training.fit import Epoch, fit, validation_scores


def vector_logits(module, vectors: list[np.ndarray], device: str, batch: int = 64) -> np.ndarray:
    """Document logits ``[N, L]`` of documents given as window vectors (eval mode)."""
    import torch

    from longdoc.heads import pad_batch

    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(vectors), batch):
            part = [torch.as_tensor(v, device=device) for v in vectors[i : i + batch]]
            x, mask = pad_batch(part, device)
            logits, _ = module(x.float(), mask)
            out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def predict_vectors(module, vectors: list[np.ndarray], device: str, batch: int = 64) -> np.ndarray:
    """Predicted label indices of documents given as window vectors (eval mode)."""
    if not vectors:
        return np.zeros(0, dtype=np.int64)
    return vector_logits(module, vectors, device, batch).argmax(-1)


def train_frozen(
    cfg: TrainConfig,
    encoder_dir: Path,
    split: Split,
    labels: list[str],
    log: Callable[[str], None],
    problem: str = SINGLE_LABEL,
) -> dict:
    """Train the head over cached window vectors; returns the trained ``module`` (on the
    CPU, best epoch), the history, the validation logits of the best epoch (multi-label
    thresholds are chosen on them) and the run's figures for ``training.json``. Features
    are computed for the training data as read (``split.pool``) when validation was held
    out of it, so the cache entry is the one every run on that data shares. ``problem``:
    the loss (softmax cross-entropy, or a sigmoid per label) and the validation scores."""
    import torch

    from longdoc.features import compute_features, feature_chunking, select_features
    from longdoc.heads import pad_batch

    chunking = cfg.chunking_config()
    base = feature_chunking(chunking, cfg.window)
    kind = "pooled" if cfg.head in LOGIT_HEADS else "mean"
    started = time.perf_counter()

    computed = 0

    def vectors_of(examples: list[Example]):
        nonlocal computed
        feats = compute_features(
            examples,
            encoder_dir,
            base,
            mode=cfg.window,
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
            log=log,
        )
        computed += feats.computed
        return feats, select_features(feats, examples, chunking, cfg.window, kind)

    train_ex, val_ex = split.train, split.validation
    if split.pool is not None:
        feats, pool_vec = vectors_of(split.pool)
        train_vec = [pool_vec[i] for i in split.train_index]
        val_vec = [pool_vec[i] for i in split.validation_index]
    else:
        feats, train_vec = vectors_of(train_ex)
        val_vec = vectors_of(val_ex)[1] if val_ex else None
    feature_seconds = time.perf_counter() - started
    y_train = targets(train_ex, labels, problem)
    truth = multi_hot if problem == MULTI_LABEL else label_indices
    y_val = truth(val_ex, labels) if val_ex else None
    loss_of = loss_function(problem)

    device = resolve_device(cfg.device)
    if device == "cpu":
        # Heads are small: one thread avoids OpenMP spinning against other processes
        # (measured 10-20x faster per epoch on a busy 2-core machine).
        torch.set_num_threads(cfg.threads or 1)
    seed_everything(cfg.seed)
    module = build_head_module(cfg.head, train_vec[0].shape[1], len(labels), cfg).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in train_vec]
    steps = 0

    def run_epoch(epoch: int) -> Epoch:
        nonlocal steps
        module.train()
        losses: list[float] = []
        batches = length_batches([len(t) for t in tensors], cfg.batch_size, rng)
        bar = epoch_bar(epoch, cfg, len(batches))
        for batch in batches:
            parts = [
                tensors[i][sample_windows(len(tensors[i]), cfg.train_windows, rng)] for i in batch
            ]
            x, mask = pad_batch([p.to(device) for p in parts], device)
            logits, _ = module(x, mask)
            target = torch.as_tensor(y_train[batch], device=device)
            loss = loss_of(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            bar.update(1)  # before the postfix: the count shown is the batches done
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        bar.close()
        return Epoch(losses, steps)

    def validate() -> dict:
        logits = vector_logits(module, val_vec, device)
        return validation_scores(predictions(logits, problem), y_val, labels)

    train_started = time.perf_counter()
    history = fit(
        run_epoch,
        epochs=cfg.epochs,
        patience=cfg.patience,
        get_state=module.state_dict,
        set_state=module.load_state_dict,
        validate=validate if val_vec is not None else None,
        log=log,
    )
    module.eval()
    val_logits = vector_logits(module, val_vec, device) if val_vec else None
    return {
        "module": module.cpu(),
        "history": history,
        "validation_logits": val_logits,
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(time.perf_counter() - train_started, 2),
        "feature_cache": feats.key,
        "feature_windows_computed": computed,
        "windows": int(sum(len(v) for v in train_vec)),
    }
