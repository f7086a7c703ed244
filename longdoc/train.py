"""`longdoc train`: fine-tune a head (and optionally the encoder) on the serving windows.

Two regimes, one output format:

* ``--freeze-encoder``: window vectors are computed once by :mod:`longdoc.features` (cached,
  keyed by encoder, chunking and data) and only the head trains: minutes on 2 CPU cores.
* end to end: gradients flow through the encoder for every window of each document
  (``--train-windows K`` samples K windows per document per step; every window is used at
  evaluation), gradient accumulation, and on CUDA gradient checkpointing and bf16/fp16
  autocast.

The output directory is a checkpoint in exactly the formats ``longdoc export`` reads
(``BertForSequenceClassification`` for the ``logits-*`` heads; ``BertModel`` + ``head.json``
+ ``head.safetensors`` for ``mean-pool``/``transformer``), with the chunking it was trained
with in ``head.json``, so ``longdoc export --checkpoint DIR`` needs no other flag. Next to
it: ``training.json`` (configuration, per-epoch log, timings, data checksums) and
``training.png`` (loss and validation accuracy per epoch).

``--baseline tfidf`` trains the non-neural whole-text baseline instead (TF-IDF + logistic
regression, scikit-learn), evaluated by ``longdoc evaluate --checkpoint`` like the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from longdoc.chunking import ChunkingConfig, ChunkingError, select_windows, window_ranges
from longdoc.contract import HEADS, LOGIT_HEADS, OVERFLOW_POLICIES, PRESETS, STRATEGIES
from longdoc.data import (
    DataError,
    Example,
    check_known_labels,
    check_training_labels,
    data_hash,
    read_dataset,
)

TRAINING_JSON = "training.json"
TRAINING_PNG = "training.png"
TFIDF_FILE = "tfidf.pkl"
WINDOW_MODES = ("chunks", "head_tail")
# Frozen features are computed for at least this many windows per document (head_tail
# selection), so that heads with smaller max_chunks reuse one cache.
FEATURE_MAX_CHUNKS = 64


@dataclass
class TrainConfig:
    train: Path
    output: Path
    validation: Path | None = None
    encoder: Path | None = None
    preset: str | None = None
    head: str = "mean-pool"
    baseline: str | None = None  # "tfidf"
    freeze_encoder: bool = False
    window: str = "chunks"
    chunking: dict = field(default_factory=dict)
    epochs: int = 10
    max_steps: int | None = None
    seed: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr: float = 3e-5
    weight_decay: float = 0.01
    dropout: float = 0.1
    train_windows: int | None = None
    grad_accum: int = 1
    patience: int = 3
    amp: str = "auto"  # auto | off | bf16 | fp16
    gradient_checkpointing: bool | None = None  # default: on CUDA, end to end
    device: str = "auto"
    cache_dir: Path | None = None
    layers: int = 2
    num_heads: int = 4
    ffn: int | None = None
    max_positions: int = 256
    progress: bool = True
    threads: int = 0  # torch CPU threads (0: 1 for frozen heads, torch's default end to end)
    init_from: Path | None = None  # a `longdoc train` output: start from its head weights

    def chunking_config(self) -> ChunkingConfig:
        return ChunkingConfig.from_dict(self.chunking)


# --------------------------------------------------------------------------- helpers


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def materialize_preset(name: str, seed: int, cache_dir: Path) -> Path:
    """A preset architecture with seeded random weights as a directory (so that it has a
    hash, and a frozen preset encoder shares the feature cache)."""
    import torch
    from transformers import BertConfig, BertModel

    from longdoc.checkpoint import PRESETS as SIZES
    from longdoc.checkpoint import default_tokenizer_dir

    if name not in SIZES:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(SIZES)}")
    target = cache_dir / "presets" / f"{name}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **SIZES[name])
    model = BertModel(config, add_pooling_layer=True)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    shutil.copy(default_tokenizer_dir() / "tokenizer.json", tmp / "tokenizer.json")
    tmp.rename(target)
    return target


def encoder_tokenizer(encoder_dir: Path) -> Path:
    from longdoc.checkpoint import default_tokenizer_dir

    return encoder_dir if (encoder_dir / "tokenizer.json").is_file() else default_tokenizer_dir()


def window_indices(num_tokens: int, chunking: ChunkingConfig, mode: str) -> tuple[list[int], int]:
    """Which of a document's windows ``chunking`` keeps, and how many it has in all."""
    if mode == "head_tail":
        return [0], 1
    total = len(window_ranges(num_tokens, chunking.body_length, chunking.overlap,
                              chunking.strategy))  # fmt: skip
    return select_windows(total, chunking), total


def feature_chunking(chunking: ChunkingConfig, mode: str) -> ChunkingConfig:
    """The chunking the feature cache is computed with: the same windows, but at least
    FEATURE_MAX_CHUNKS of them per document (heads with fewer reuse the cache); every
    window when ``max_chunks`` is 0."""
    if mode == "head_tail":
        return ChunkingConfig.from_dict({**chunking.to_dict(), "max_chunks": 1,
                                         "overflow": "head"})  # fmt: skip
    keep = 0 if not chunking.max_chunks else max(FEATURE_MAX_CHUNKS, chunking.max_chunks)
    return ChunkingConfig.from_dict({**chunking.to_dict(), "max_chunks": keep,
                                     "overflow": "head_tail"})  # fmt: skip


def select_features(features, examples: list[Example], chunking: ChunkingConfig, mode: str,
                    kind: str) -> list[np.ndarray]:  # fmt: skip
    """Each document's window vectors under ``chunking``, taken from a feature cache that
    was computed with :func:`feature_chunking`."""
    base = feature_chunking(chunking, mode)
    out = []
    vectors = features.vectors(kind)
    for i, example in enumerate(examples):
        rows = features.windows(i)
        if mode == "head_tail":
            out.append(vectors[rows])
            continue
        n_tokens = int(features.num_tokens[i])
        try:
            wanted, _ = window_indices(n_tokens, chunking, mode)
        except ChunkingError as exc:
            raise DataError(f"{example.source}: {exc}") from None
        stored, _ = window_indices(n_tokens, base, mode)
        position = {w: j for j, w in enumerate(stored)}
        out.append(vectors[rows][[position[w] for w in wanted]])
    return out


# --------------------------------------------------------------------------- models


def build_head_module(head: str, hidden: int, num_labels: int, cfg: TrainConfig):
    """The trainable part over window vectors: for logits heads, the classifier layer of a
    BertForSequenceClassification (on the pooled [CLS]) followed by mean/max."""
    import torch
    from torch import nn

    from longdoc.heads import make_aggregator

    torch.manual_seed(cfg.seed)
    if head in LOGIT_HEADS:
        return LogitsHead(hidden, num_labels, head, cfg.dropout)
    options = head_options(cfg)
    module = make_aggregator(head, hidden, num_labels, **options)
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
    return module


def head_options(cfg: TrainConfig) -> dict:
    if cfg.head != "transformer":
        return {}
    options = {
        "layers": cfg.layers,
        "num_heads": cfg.num_heads,
        "max_positions": max(cfg.max_positions, cfg.chunking_config().max_chunks),
    }
    if cfg.ffn:
        options["ffn"] = cfg.ffn
    return options  # fmt: skip


def _logits_head_class():
    from torch import nn

    from longdoc.heads import make_aggregator

    class _LogitsHead(nn.Module):
        def __init__(self, hidden: int, num_labels: int, head: str, dropout: float) -> None:
            super().__init__()
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(hidden, num_labels)
            self.pool = make_aggregator(head, 0, num_labels)

        def forward(self, vectors, chunk_mask):
            return self.pool(self.classifier(self.dropout(vectors)), chunk_mask)

    return _LogitsHead


def LogitsHead(hidden: int, num_labels: int, head: str, dropout: float):  # noqa: N802
    return _logits_head_class()(hidden, num_labels, head, dropout)


def pad_batch(vectors: list, device: str):
    """Stack ``[n_i, D]`` tensors into ``[B, C, D]`` with a ``[B, C]`` chunk mask."""
    import torch

    width = max(v.shape[0] for v in vectors)
    dim = vectors[0].shape[1]
    out = torch.zeros((len(vectors), width, dim), dtype=vectors[0].dtype, device=device)
    mask = torch.zeros((len(vectors), width), dtype=torch.int64, device=device)
    for i, v in enumerate(vectors):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = 1
    return out, mask


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


# --------------------------------------------------------------------------- training loop


def _evaluate_vectors(module, vectors: list, labels: np.ndarray, device: str, batch: int = 64):
    import torch

    module.eval()
    predictions = []
    with torch.no_grad():
        for i in range(0, len(vectors), batch):
            part = [torch.as_tensor(v, device=device) for v in vectors[i : i + batch]]
            x, mask = pad_batch(part, device)
            logits, _ = module(x.float(), mask)
            predictions.append(logits.argmax(-1).cpu().numpy())
    pred = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    return pred


def _val_scores(pred: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    from longdoc.metrics import classification_report

    report = classification_report(y, pred, labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def train_frozen(cfg: TrainConfig, encoder_dir: Path, train_ex, val_ex, labels, log) -> dict:
    """Head training over cached window vectors."""
    import torch
    from tqdm import tqdm

    from longdoc.features import compute_features

    chunking = cfg.chunking_config()
    base = feature_chunking(chunking, cfg.window)
    kind = "pooled" if cfg.head in LOGIT_HEADS else "mean"
    started = time.perf_counter()
    feats = compute_features(train_ex, encoder_dir, base, mode=cfg.window,
                             cache_dir=cfg.cache_dir, progress=cfg.progress, log=log)  # fmt: skip
    train_vec = select_features(feats, train_ex, chunking, cfg.window, kind)
    val_vec = None
    if val_ex:
        vfeats = compute_features(
            val_ex, encoder_dir, base, mode=cfg.window, cache_dir=cfg.cache_dir,
            progress=cfg.progress, log=log,
        )  # fmt: skip
        val_vec = select_features(vfeats, val_ex, chunking, cfg.window, kind)
    feature_seconds = time.perf_counter() - started
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.asarray([index[e.label] for e in train_ex])
    y_val = np.asarray([index[e.label] for e in val_ex]) if val_ex else None

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
    history, best, best_state, stale, steps = [], None, None, 0, 0
    train_started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        losses = []
        batches = length_batches([len(t) for t in tensors], cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress, leave=False)  # fmt: skip
        for batch in bar:
            parts = [tensors[i][sample_windows(len(tensors[i]), cfg.train_windows, rng)]
                     for i in batch]  # fmt: skip
            x, mask = pad_batch([p.to(device) for p in parts], device)
            logits, _ = module(x, mask)
            loss = torch.nn.functional.cross_entropy(
                logits, torch.as_tensor(y_train[batch], device=device)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        row = {"epoch": epoch, "steps": steps, "train_loss": float(np.mean(losses)),
               "seconds": round(time.perf_counter() - train_started, 2)}  # fmt: skip
        if val_vec is not None:
            pred = _evaluate_vectors(module, val_vec, y_val, device)
            row.update({f"validation_{k}": v for k, v in _val_scores(pred, y_val, labels).items()})
        history.append(row)
        log(_epoch_line(row))
        score = _score(row)
        if best is None or score > best:
            best, best_state, stale = score, copy.deepcopy(module.state_dict()), 0
            row["best"] = True
        else:
            stale += 1
            if val_vec is not None and stale >= cfg.patience:
                log(f"early stopping: no validation gain for {cfg.patience} epochs")
                break
    module.load_state_dict(best_state)
    module.eval()
    return {
        "module": module.cpu(), "history": history,
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(time.perf_counter() - train_started, 2),
        "feature_cache": feats.key, "windows": int(sum(len(v) for v in train_vec)),
    }  # fmt: skip


def _score(row: dict) -> tuple:
    if "validation_macro_f1" in row:
        return (row["validation_macro_f1"], row["validation_accuracy"], -row["epoch"])
    return (-row["train_loss"],)


def _epoch_line(row: dict) -> str:
    text = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}"
    if "validation_accuracy" in row:
        text += (f", validation accuracy {row['validation_accuracy']:.3f} "
                 f"macro-F1 {row['validation_macro_f1']:.3f}")  # fmt: skip
    return text + f" ({row['seconds']:.1f} s)"


class EndToEndModel:
    """Encoder (trainable) + aggregator; built from an encoder directory."""

    def __init__(self, cfg: TrainConfig, encoder_dir: Path, labels: list[str], device: str):
        import torch
        from transformers import BertForSequenceClassification, BertModel
        from transformers.utils import logging as hf_logging

        from longdoc.heads import ChunkEncoder, make_aggregator

        hf_logging.set_verbosity_error()
        torch.manual_seed(cfg.seed)
        if cfg.head in LOGIT_HEADS:
            bert = BertForSequenceClassification.from_pretrained(
                encoder_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                attn_implementation="eager",
            )  # fmt: skip
            self.encoder = ChunkEncoder(bert, "logits")
            self.aggregator = make_aggregator(cfg.head, 0, len(labels))
            self.core = bert.bert
        else:
            bert = BertModel.from_pretrained(encoder_dir, add_pooling_layer=False,
                                             attn_implementation="eager")  # fmt: skip
            self.encoder = ChunkEncoder(bert, "mean")
            self.aggregator = build_head_module(cfg.head, bert.config.hidden_size, len(labels), cfg)
            self.core = bert
        for m in self.encoder.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
        if cfg.init_from:
            self.load_head(Path(cfg.init_from), labels)
        self.encoder.to(device)
        self.aggregator.to(device)
        self.device = device

    def load_head(self, checkpoint: Path, labels: list[str]) -> None:
        """Warm start (linear probe, then fine-tune): the head a frozen run trained."""
        import torch
        from safetensors.torch import load_file

        from longdoc.checkpoint import HEAD_JSON, HEAD_WEIGHTS

        spec = json.loads((checkpoint / HEAD_JSON).read_text())
        if spec["labels"] != labels:
            raise ValueError(f"{checkpoint}: its labels {spec['labels']} differ from {labels}")
        if spec["head"] in LOGIT_HEADS:
            state = load_file(checkpoint / "model.safetensors")
            with torch.no_grad():
                self.encoder.bert.classifier.weight.copy_(state["classifier.weight"])
                self.encoder.bert.classifier.bias.copy_(state["classifier.bias"])
        else:
            self.aggregator.load_state_dict(load_file(checkpoint / HEAD_WEIGHTS))

    def parameters(self):
        return list(self.encoder.parameters()) + list(self.aggregator.parameters())

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)
        self.aggregator.train(mode)


def _pad_to(a: np.ndarray, width: int) -> np.ndarray:
    """Right-pad ``[n, s]`` with zeros to ``[n, width]`` (masked positions: any id works)."""
    if a.shape[1] >= width:
        return a
    return np.pad(a, ((0, 0), (0, width - a.shape[1])))


def _trim(ids: np.ndarray, mask: np.ndarray):
    width = int(mask.sum(axis=1).max())
    return ids[:, :width], mask[:, :width]


def _forward_documents(model: EndToEndModel, docs: list[tuple[np.ndarray, np.ndarray]],
                       autocast, micro: int = 64):  # fmt: skip
    """Logits for a batch of documents: every window of the batch in encoder calls of at
    most ``micro`` windows (padding trimmed), then the aggregator over each document."""
    import torch

    width = max(int(d[1].sum(axis=1).max()) for d in docs)
    ids = np.concatenate([_pad_to(d[0][:, :width], width) for d in docs])
    mask = np.concatenate([_pad_to(d[1][:, :width], width) for d in docs])
    parts = []
    for i in range(0, len(ids), micro):
        a, m = _trim(ids[i : i + micro], mask[i : i + micro])
        with autocast():
            parts.append(model.encoder(torch.from_numpy(a).to(model.device),
                                       torch.from_numpy(m).to(model.device)).float())  # fmt: skip
    vectors = torch.cat(parts)
    split, offset = [], 0
    for d in docs:
        split.append(vectors[offset : offset + len(d[0])])
        offset += len(d[0])
    x, chunk_mask = pad_batch(split, model.device)
    logits, _ = model.aggregator(x, chunk_mask)
    return logits


def _chunk_all(examples: list[Example], tokenizer, chunking: ChunkingConfig, mode: str):
    from longdoc.chunking import chunk_text, special_ids
    from longdoc.features import head_tail_window

    out = []
    for e in examples:
        try:
            if mode == "head_tail":
                cls_id, sep_id, pad_id = special_ids(tokenizer)
                body = head_tail_window(
                    np.asarray(tokenizer.encode(e.text, add_special_tokens=False).ids),
                    chunking.body_length,
                )
                row = np.concatenate([[cls_id], body, [sep_id]]).astype(np.int64)[None, :]
                out.append((row, np.ones_like(row)))
            else:
                c = chunk_text(e.text, tokenizer, chunking)
                out.append((c.input_ids, c.attention_mask))
        except ChunkingError as exc:
            raise DataError(f"{e.source}: {exc}") from None
    return out


def _autocast_factory(amp: str, device: str):
    import contextlib

    import torch

    if amp == "auto":
        if device.startswith("cuda"):
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "off"
    if amp == "off":
        return amp, contextlib.nullcontext, None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    kind = "cuda" if device.startswith("cuda") else "cpu"
    scaler = torch.amp.GradScaler(kind) if amp == "fp16" and kind == "cuda" else None
    return amp, (lambda: torch.autocast(kind, dtype=dtype)), scaler


def train_end_to_end(cfg: TrainConfig, encoder_dir: Path, train_ex, val_ex, labels, log) -> dict:
    import torch
    from tqdm import tqdm

    from longdoc.chunking import load_tokenizer

    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    chunking = cfg.chunking_config()
    tokenizer = load_tokenizer(encoder_tokenizer(encoder_dir))
    train_docs = _chunk_all(train_ex, tokenizer, chunking, cfg.window)
    val_docs = _chunk_all(val_ex, tokenizer, chunking, cfg.window) if val_ex else None
    model = EndToEndModel(cfg, encoder_dir, labels, device)
    checkpointing = cfg.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device.startswith("cuda")
    if checkpointing:
        model.core.gradient_checkpointing_enable()
    amp, autocast, scaler = _autocast_factory(cfg.amp, device)
    encoder_params = list(model.encoder.parameters())
    head_params = list(model.aggregator.parameters())
    if cfg.head in LOGIT_HEADS:  # the classifier layer is the head: head learning rate
        classifier = list(model.encoder.bert.classifier.parameters())
        ids = {id(p) for p in classifier}
        encoder_params = [p for p in encoder_params if id(p) not in ids]
        head_params = head_params + classifier
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": cfg.encoder_lr}, {"params": head_params, "lr": cfg.lr}],
        weight_decay=cfg.weight_decay,
    )
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.asarray([index[e.label] for e in train_ex])
    y_val = np.asarray([index[e.label] for e in val_ex]) if val_ex else None
    rng = np.random.default_rng(cfg.seed)
    history, best, best_state, stale, steps, windows = [], None, None, 0, 0, 0
    step_times: list[tuple[int, float]] = []
    started = time.perf_counter()
    done = False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(train_docs))
        losses = []
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress, leave=False)  # fmt: skip
        optimizer.zero_grad()
        step_started, step_windows = time.perf_counter(), 0
        for b, batch in enumerate(batches):
            docs = []
            for i in batch:
                ids, mask = train_docs[i]
                keep = sample_windows(len(ids), cfg.train_windows, rng)
                docs.append((ids[keep], mask[keep]))
            step_windows += sum(len(d[0]) for d in docs)
            logits = _forward_documents(model, docs, autocast)
            loss = (
                torch.nn.functional.cross_entropy(
                    logits, torch.as_tensor(y_train[batch], device=device)
                )
                / cfg.grad_accum
            )
            (scaler.scale(loss) if scaler else loss).backward()
            losses.append(loss.item() * cfg.grad_accum)
            bar.update(1)
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad()
                steps += 1
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                step_times.append((step_windows, time.perf_counter() - step_started))
                windows += step_windows
                step_started, step_windows = time.perf_counter(), 0
                bar.set_postfix(loss=f"{np.mean(losses):.3f}", step=steps)
                if cfg.max_steps and steps >= cfg.max_steps:
                    done = True
                    break
        bar.close()
        row = {"epoch": epoch, "steps": steps, "train_loss": float(np.mean(losses)),
               "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
        if val_docs is not None:
            pred = predict_end_to_end(model, val_docs, autocast)
            row.update({f"validation_{k}": v for k, v in _val_scores(pred, y_val, labels).items()})
        history.append(row)
        log(_epoch_line(row))
        score = _score(row)
        if best is None or score > best:
            best, stale = score, 0
            best_state = (copy.deepcopy(model.encoder.state_dict()),
                          copy.deepcopy(model.aggregator.state_dict()))  # fmt: skip
            row["best"] = True
        else:
            stale += 1
        if done or (val_docs is not None and stale >= cfg.patience):
            break
    model.encoder.load_state_dict(best_state[0])
    model.aggregator.load_state_dict(best_state[1])
    if checkpointing:
        model.core.gradient_checkpointing_disable()
    model.train(False)
    total_w = sum(w for w, _ in step_times)
    total_s = sum(s for _, s in step_times)
    return {
        "model": model, "history": history, "amp": amp, "gradient_checkpointing": checkpointing,
        "device": device, "steps": steps, "windows": windows,
        "train_seconds": round(time.perf_counter() - started, 2),
        "windows_per_s": round(total_w / total_s, 3) if total_s else None,
        "windows_per_step": round(total_w / len(step_times), 2) if step_times else None,
        "windows_per_s_after_first": _rate(step_times[1:]),
    }  # fmt: skip


def _rate(step_times: list[tuple[int, float]]) -> float | None:
    seconds = sum(s for _, s in step_times)
    return round(sum(w for w, _ in step_times) / seconds, 3) if seconds else None


def predict_end_to_end(model: EndToEndModel, docs, autocast) -> np.ndarray:
    import torch

    model.train(False)
    out = []
    with torch.no_grad():
        for i in range(0, len(docs), 8):
            out.append(_forward_documents(model, docs[i : i + 8], autocast).argmax(-1).cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- saving


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def save_checkpoint(cfg: TrainConfig, encoder_dir: Path, labels: list[str], result: dict) -> None:
    """Write the checkpoint in a format `longdoc export` reads, chunking recorded."""
    import torch
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from longdoc.checkpoint import HEAD_JSON, LoadedModel, save_head

    hf_logging.set_verbosity_error()
    out = cfg.output
    out.mkdir(parents=True, exist_ok=True)
    chunking = cfg.chunking_config()
    if cfg.window == "head_tail":
        chunking = ChunkingConfig.from_dict({**chunking.to_dict(), "max_chunks": 1,
                                             "overflow": "head"})  # fmt: skip
    tokenizer = encoder_tokenizer(encoder_dir) / "tokenizer.json"
    if cfg.head in LOGIT_HEADS:
        if "model" in result:  # end to end: the trained classifier model
            bert = result["model"].encoder.bert
        else:
            bert = BertForSequenceClassification.from_pretrained(
                encoder_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )  # fmt: skip
            with torch.no_grad():
                bert.classifier.weight.copy_(result["module"].classifier.weight)
                bert.classifier.bias.copy_(result["module"].classifier.bias)
        bert.config.architectures = ["BertForSequenceClassification"]
        bert.save_pretrained(out)
        spec = {"head": cfg.head, "hidden_size": bert.config.hidden_size, "labels": labels,
                "options": {}, "chunking": chunking.to_dict()}  # fmt: skip
        (out / HEAD_JSON).write_text(json.dumps(spec, indent=2) + "\n")
    else:
        if "model" in result:
            result["model"].encoder.bert.save_pretrained(out)
            aggregator = result["model"].aggregator.cpu()
        else:
            for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
                if (encoder_dir / name).is_file() and not (out / name).exists():
                    _link_or_copy(encoder_dir / name, out / name)
            aggregator = result["module"]
        from longdoc.heads import ChunkEncoder

        loaded = LoadedModel(
            cfg.head, ChunkEncoder(torch.nn.Identity(), "mean"), aggregator, labels, tokenizer,
            chunking, aggregator_hidden(aggregator), 1, head_options(cfg), source=str(out),
        )  # fmt: skip
        save_head(loaded, out)
    if tokenizer.resolve() != (out / "tokenizer.json").resolve():
        shutil.copy(tokenizer, out / "tokenizer.json")


def aggregator_hidden(module) -> int:
    return int(module.classifier.in_features)


def plot_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any("validation_accuracy" in r for r in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [r.get("validation_accuracy") for r in history], "s-", color="C1",
                 label="validation accuracy")  # fmt: skip
        ax2.set_ylabel("validation accuracy")
        ax2.set_ylim(0, 1)
        fig.legend(loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- TF-IDF


def train_tfidf(cfg: TrainConfig, train_ex, val_ex, labels, log) -> dict:
    import pickle

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    started = time.perf_counter()
    model = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=200_000),
        LogisticRegression(C=10.0, max_iter=3000),
    )
    index = {label: i for i, label in enumerate(labels)}
    model.fit([e.text for e in train_ex], [index[e.label] for e in train_ex])
    row = {"epoch": 1, "steps": 1, "train_loss": 0.0,
           "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    if val_ex:
        pred = model.predict([e.text for e in val_ex])
        y_val = np.asarray([index[e.label] for e in val_ex])
        row.update({f"validation_{k}": v for k, v in _val_scores(pred, y_val, labels).items()})
    log(_epoch_line(row))
    cfg.output.mkdir(parents=True, exist_ok=True)
    with (cfg.output / TFIDF_FILE).open("wb") as f:
        pickle.dump({"pipeline": model, "labels": labels}, f)
    return {"history": [row], "train_seconds": row["seconds"]}


# --------------------------------------------------------------------------- entry point


def train(cfg: TrainConfig, log=print) -> dict:
    """Train and save; returns the training record (also written to training.json)."""
    if cfg.head not in HEADS:
        raise ValueError(f"unknown head {cfg.head!r}; choose one of {', '.join(HEADS)}")
    if cfg.window not in WINDOW_MODES:
        raise ValueError(f"--window must be one of {WINDOW_MODES}")
    if cfg.baseline not in (None, "tfidf"):
        raise ValueError("--baseline must be 'tfidf'")
    started = time.perf_counter()
    chunking = cfg.chunking_config()
    train_ex = read_dataset(cfg.train)
    labels = check_training_labels(train_ex, str(cfg.train))
    val_ex = read_dataset(cfg.validation) if cfg.validation else []
    if val_ex:
        check_known_labels(val_ex, labels)
    record: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "labels": labels,
        "data": {"train": {"path": str(cfg.train), "documents": len(train_ex),
                           "hash": data_hash(train_ex)}},
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if val_ex:
        record["data"]["validation"] = {"path": str(cfg.validation), "documents": len(val_ex),
                                        "hash": data_hash(val_ex)}  # fmt: skip
    manifest = _find_manifest(cfg.train)
    if manifest:
        record["data"]["manifest_checksum"] = manifest.get("checksum")
    cfg.output.mkdir(parents=True, exist_ok=True)
    if cfg.baseline == "tfidf":
        record["kind"] = "tfidf"
        result = train_tfidf(cfg, train_ex, val_ex, labels, log)
    else:
        from longdoc.features import encoder_hash

        cache_dir = cfg.cache_dir or _default_cache()
        cfg.cache_dir = cache_dir
        if cfg.preset:
            encoder_dir = materialize_preset(cfg.preset, cfg.seed, Path(cache_dir))
        else:
            from longdoc.checkpoint import minilm_dir

            encoder_dir = Path(cfg.encoder) if cfg.encoder else minilm_dir()
        if not (encoder_dir / "config.json").is_file():
            raise FileNotFoundError(f"{encoder_dir}: not a Hugging Face BERT directory")
        record["encoder"] = {"path": str(encoder_dir), "hash": encoder_hash(encoder_dir),
                             "frozen": cfg.freeze_encoder}  # fmt: skip
        record["kind"] = "frozen" if cfg.freeze_encoder else "end-to-end"
        record["chunking"] = chunking.to_dict()
        record["window"] = cfg.window
        if cfg.freeze_encoder:
            result = train_frozen(cfg, encoder_dir, train_ex, val_ex, labels, log)
        else:
            result = train_end_to_end(cfg, encoder_dir, train_ex, val_ex, labels, log)
        save_checkpoint(cfg, encoder_dir, labels, result)
    record["history"] = result["history"]
    for key in ("feature_seconds", "train_seconds", "feature_cache", "windows", "amp",
                "gradient_checkpointing", "device", "steps", "windows_per_s",
                "windows_per_step", "windows_per_s_after_first"):  # fmt: skip
        if key in result:
            record[key] = result[key]
    best = [r for r in result["history"] if r.get("best")] or result["history"][-1:]
    record["best_epoch"] = best[-1]["epoch"]
    record["seconds"] = round(time.perf_counter() - started, 1)
    (cfg.output / TRAINING_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    try:
        kind = "frozen" if cfg.freeze_encoder else ""
        title = f"{cfg.baseline or cfg.head} {kind} seed {cfg.seed}"
        plot_history(result["history"], cfg.output / TRAINING_PNG, title)
    except ImportError:
        log("matplotlib is not installed: no training.png")
    log(f"trained in {record['seconds']:.0f} s -> {cfg.output}")
    return record


def _default_cache() -> Path:
    from longdoc.features import default_cache_dir

    return default_cache_dir()


def _find_manifest(path: Path) -> dict | None:
    for parent in [Path(path), *Path(path).parents][:3]:
        candidate = parent / "manifest.json"
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError:
                return None
    return None


def add_chunking_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("chunking (recorded in the checkpoint; export reuses it)")
    g.add_argument("--max-length", type=int, default=512)
    g.add_argument("--overlap", type=int, default=128)
    g.add_argument(
        "--max-chunks",
        type=int,
        default=0,
        help="cap on the windows per document (0: every window, as served)",
    )
    g.add_argument("--overflow", choices=OVERFLOW_POLICIES, default="error")
    g.add_argument("--strategy", choices=STRATEGIES, default="fixed")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune a head (frozen encoder or end to end) on labelled documents",
        description="Train a long-document classifier on the windows it will be served on; "
        "writes a checkpoint `longdoc export --checkpoint` reads as is.",
    )  # fmt: skip
    p.add_argument("--train", type=Path, required=True, help="label folders, .jsonl or .csv")
    p.add_argument("--validation", type=Path, help="for early stopping and the log")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--encoder", type=Path, help="a BERT directory (default: all-MiniLM-L6-v2)")
    src.add_argument("--preset", choices=PRESETS, help="a seeded random architecture")
    p.add_argument("--head", choices=HEADS, default="mean-pool")
    p.add_argument("--baseline", choices=("tfidf",), help="TF-IDF + logistic regression instead")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train the head on cached window vectors")  # fmt: skip
    p.add_argument(
        "--window",
        choices=WINDOW_MODES,
        default="chunks",
        help="head_tail: one window of the first 128 + last 382 tokens (baseline)",
    )
    add_chunking_args(p)
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=16, help="documents per batch")
    t.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
    t.add_argument("--encoder-lr", type=float, default=3e-5)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument(
        "--train-windows",
        type=int,
        metavar="K",
        help="sample K windows per document per step (all at evaluation)",
    )
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--patience", type=int, default=3, help="early stopping (epochs)")
    t.add_argument(
        "--amp",
        choices=("auto", "off", "bf16", "fp16"),
        default="auto",
        help="autocast (auto: bf16/fp16 on CUDA, off on CPU)",
    )
    t.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CUDA end to end",
    )
    t.add_argument("--device", default="auto")
    t.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: 1 for frozen heads, default end to end)",
    )
    t.add_argument("--cache-dir", type=Path, help="feature cache (default runs/cache)")
    h = p.add_argument_group("transformer head")
    h.add_argument("--layers", type=int, default=2)
    h.add_argument("--num-heads", type=int, default=4)
    h.add_argument("--ffn", type=int)
    h.add_argument("--max-positions", type=int, default=256)
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="DIR",
        help="end to end: start from the head of a (frozen) `longdoc train` output",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", type=Path, required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        train=args.train, output=args.output, validation=args.validation, encoder=args.encoder,
        preset=args.preset, head=args.head, baseline=args.baseline,
        freeze_encoder=args.freeze_encoder, window=args.window,
        chunking={"max_length": args.max_length, "overlap": args.overlap,
                  "max_chunks": args.max_chunks, "overflow": args.overflow,
                  "strategy": args.strategy},
        epochs=args.epochs, max_steps=args.max_steps, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, encoder_lr=args.encoder_lr,
        weight_decay=args.weight_decay, dropout=args.dropout, train_windows=args.train_windows,
        grad_accum=args.grad_accum, patience=args.patience, amp=args.amp,
        gradient_checkpointing=args.gradient_checkpointing, device=args.device,
        cache_dir=args.cache_dir, layers=args.layers, num_heads=args.num_heads, ffn=args.ffn,
        max_positions=args.max_positions, progress=not args.no_progress,
        init_from=args.init_from, threads=args.threads,
    )  # fmt: skip
    try:
        cfg.chunking_config()
        train(cfg)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
