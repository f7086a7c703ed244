"""End-to-end training: gradients flow through the encoder for the windows of each document.

A step reads a batch of documents: every window (or ``--train-windows K`` sampled per
document), encoded in micro-batches of at most 64 windows with padding trimmed, then the
aggregator over each document. Gradient accumulation spreads a batch over several steps;
on CUDA, gradient checkpointing and bf16/fp16 autocast are on by default. Every window is
used at evaluation.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from longdoc.chunking import ChunkingConfig, ChunkingError
from longdoc.contract import LOGIT_HEADS, WEIGHTS_FILE
from longdoc.data import DataError, Example
from longdoc.decision import MULTI_LABEL, SINGLE_LABEL
from longdoc.training.common import (
    build_head_module,
    encoder_tokenizer,
    epoch_bar,
    label_indices,
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

# A document's windows as token ids and attention mask, each [n_windows, seq_len].
Document = tuple[np.ndarray, np.ndarray]


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
                encoder_dir,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                attn_implementation="eager",
            )
            self.encoder = ChunkEncoder(bert, "logits")
            self.aggregator = make_aggregator(cfg.head, 0, len(labels))
            self.core = bert.bert
        else:
            bert = BertModel.from_pretrained(
                encoder_dir, add_pooling_layer=False, attn_implementation="eager"
            )
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
            state = load_file(checkpoint / WEIGHTS_FILE)
            with torch.no_grad():
                self.encoder.bert.classifier.weight.copy_(state["classifier.weight"])
                self.encoder.bert.classifier.bias.copy_(state["classifier.bias"])
        else:
            self.aggregator.load_state_dict(load_file(checkpoint / HEAD_WEIGHTS))

    def parameters(self) -> list:
        return list(self.encoder.parameters()) + list(self.aggregator.parameters())

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)
        self.aggregator.train(mode)

    def state(self) -> tuple[dict, dict]:
        return self.encoder.state_dict(), self.aggregator.state_dict()

    def load_state(self, state: tuple[dict, dict]) -> None:
        self.encoder.load_state_dict(state[0])
        self.aggregator.load_state_dict(state[1])


def _pad_to(a: np.ndarray, width: int) -> np.ndarray:
    """Right-pad ``[n, s]`` with zeros to ``[n, width]`` (masked positions: any id works)."""
    if a.shape[1] >= width:
        return a
    return np.pad(a, ((0, 0), (0, width - a.shape[1])))


def _trim(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = int(mask.sum(axis=1).max())
    return ids[:, :width], mask[:, :width]


def forward_documents(model: EndToEndModel, docs: list[Document], autocast, micro: int = 64):
    """Logits for a batch of documents: every window of the batch in encoder calls of at
    most ``micro`` windows (padding trimmed), then the aggregator over each document."""
    import torch

    from longdoc.heads import pad_batch

    width = max(int(d[1].sum(axis=1).max()) for d in docs)
    ids = np.concatenate([_pad_to(d[0][:, :width], width) for d in docs])
    mask = np.concatenate([_pad_to(d[1][:, :width], width) for d in docs])
    parts = []
    for i in range(0, len(ids), micro):
        a, m = _trim(ids[i : i + micro], mask[i : i + micro])
        with autocast():
            a_t = torch.from_numpy(a).to(model.device)
            m_t = torch.from_numpy(m).to(model.device)
            parts.append(model.encoder(a_t, m_t).float())
    vectors = torch.cat(parts)
    split, offset = [], 0
    for d in docs:
        split.append(vectors[offset : offset + len(d[0])])
        offset += len(d[0])
    x, chunk_mask = pad_batch(split, model.device)
    logits, _ = model.aggregator(x, chunk_mask)
    return logits


def chunk_all(
    examples: list[Example], tokenizer, chunking: ChunkingConfig, mode: str
) -> list[Document]:
    """Every example's windows, as the chunker cuts them (or the one head+tail window)."""
    from longdoc.chunking import chunk_text
    from longdoc.features import document_windows

    out = []
    for e in examples:
        try:
            if mode == "head_tail":
                rows, _ = document_windows(e.text, tokenizer, chunking, mode)
                row = rows[0][None, :]
                out.append((row, np.ones_like(row)))
            else:
                c = chunk_text(e.text, tokenizer, chunking)
                out.append((c.input_ids, c.attention_mask))
        except ChunkingError as exc:
            raise DataError(f"{e.source}: {exc}") from None
    return out


def autocast_factory(amp: str, device: str):
    """``(amp mode used, autocast context factory, grad scaler or None)``: ``auto`` is
    bf16 on CUDA devices that support it, fp16 on the others, off on the CPU."""
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


def logits_end_to_end(model: EndToEndModel, docs: list[Document], autocast) -> np.ndarray:
    """Document logits ``[N, L]``, eight documents at a time (eval mode)."""
    import torch

    model.train(False)
    out = []
    with torch.no_grad():
        for i in range(0, len(docs), 8):
            out.append(forward_documents(model, docs[i : i + 8], autocast).float().cpu())
    return torch.cat(out).numpy()


def predict_end_to_end(model: EndToEndModel, docs: list[Document], autocast) -> np.ndarray:
    """Predicted label indices, eight documents at a time (eval mode)."""
    return logits_end_to_end(model, docs, autocast).argmax(-1)


def _rate(step_times: list[tuple[int, float]]) -> float | None:
    seconds = sum(s for _, s in step_times)
    return round(sum(w for w, _ in step_times) / seconds, 3) if seconds else None


def warmup_linear_decay(optimizer, total_steps: int, warmup: float):
    """The usual fine-tuning schedule: the learning rates rise linearly from 0 over the
    first ``warmup`` share of the steps, then fall linearly to 0 at the last step (a
    pretrained encoder hit by a full learning rate in its first steps forgets more than
    the head learns). Returns the scheduler and its description for training.json."""
    import torch

    warm = max(1, round(warmup * total_steps)) if warmup else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return scheduler, {
        "kind": "linear warm-up, linear decay",
        "warmup_steps": warm,
        "total_steps": total_steps,
    }


def _optimizer(cfg: TrainConfig, model: EndToEndModel):
    """AdamW with two learning rates: ``encoder_lr`` for the encoder, ``lr`` for the head
    (for the logits heads, the classifier layer inside the BERT model is the head)."""
    import torch

    encoder_params = list(model.encoder.parameters())
    head_params = list(model.aggregator.parameters())
    if cfg.head in LOGIT_HEADS:
        classifier = list(model.encoder.bert.classifier.parameters())
        ids = {id(p) for p in classifier}
        encoder_params = [p for p in encoder_params if id(p) not in ids]
        head_params = head_params + classifier
    return torch.optim.AdamW(
        [{"params": encoder_params, "lr": cfg.encoder_lr}, {"params": head_params, "lr": cfg.lr}],
        weight_decay=cfg.weight_decay,
    )


def train_end_to_end(
    cfg: TrainConfig,
    encoder_dir: Path,
    train_ex: list[Example],
    val_ex: list[Example],
    labels: list[str],
    log: Callable[[str], None],
    problem: str = SINGLE_LABEL,
) -> dict:
    """Fine-tune encoder and head together; returns the trained ``model`` (best epoch),
    the history, the best epoch's validation logits (multi-label thresholds are chosen on
    them) and throughput figures (windows per second per optimizer step). ``problem``: the
    loss (softmax cross-entropy, or a sigmoid per label) and the validation scores."""
    import torch

    from longdoc.chunking import load_tokenizer

    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    chunking = cfg.chunking_config()
    tokenizer = load_tokenizer(encoder_tokenizer(encoder_dir))
    train_docs = chunk_all(train_ex, tokenizer, chunking, cfg.window)
    val_docs = chunk_all(val_ex, tokenizer, chunking, cfg.window) if val_ex else None
    model = EndToEndModel(cfg, encoder_dir, labels, device)
    checkpointing = cfg.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device.startswith("cuda")
    if checkpointing:
        model.core.gradient_checkpointing_enable()
    amp, autocast, scaler = autocast_factory(cfg.amp, device)
    optimizer = _optimizer(cfg, model)
    batches_per_epoch = -(-len(train_docs) // cfg.batch_size)
    total_steps = cfg.epochs * -(-batches_per_epoch // cfg.grad_accum)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler, schedule = warmup_linear_decay(optimizer, total_steps, cfg.warmup)
    y_train = targets(train_ex, labels, problem)
    truth = multi_hot if problem == MULTI_LABEL else label_indices
    y_val = truth(val_ex, labels) if val_ex else None
    loss_of = loss_function(problem)
    rng = np.random.default_rng(cfg.seed)
    steps = windows = 0
    step_times: list[tuple[int, float]] = []

    def run_epoch(epoch: int) -> Epoch:
        nonlocal steps, windows
        model.train()
        order = rng.permutation(len(train_docs))
        losses: list[float] = []
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        bar = epoch_bar(epoch, cfg, len(batches))
        optimizer.zero_grad()
        step_started, step_windows = time.perf_counter(), 0
        stop = False
        for b, batch in enumerate(batches):
            docs = []
            for i in batch:
                ids, mask = train_docs[i]
                keep = sample_windows(len(ids), cfg.train_windows, rng)
                docs.append((ids[keep], mask[keep]))
            step_windows += sum(len(d[0]) for d in docs)
            logits = forward_documents(model, docs, autocast)
            target = torch.as_tensor(y_train[batch], device=device)
            loss = loss_of(logits.float(), target) / cfg.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            losses.append(loss.item() * cfg.grad_accum)
            bar.update(1)
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                steps += 1
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                step_times.append((step_windows, time.perf_counter() - step_started))
                windows += step_windows
                step_started, step_windows = time.perf_counter(), 0
                bar.set_postfix(loss=f"{np.mean(losses):.3f}", step=steps)
                if cfg.max_steps and steps >= cfg.max_steps:
                    stop = True
                    break
        bar.close()
        return Epoch(losses, steps, stop)

    def validate() -> dict:
        logits = logits_end_to_end(model, val_docs, autocast)
        return validation_scores(predictions(logits, problem), y_val, labels)

    started = time.perf_counter()
    history = fit(
        run_epoch,
        epochs=cfg.epochs,
        patience=cfg.patience,
        get_state=model.state,
        set_state=model.load_state,
        validate=validate if val_docs is not None else None,
        log=log,
    )
    if checkpointing:
        model.core.gradient_checkpointing_disable()
    model.train(False)
    val_logits = logits_end_to_end(model, val_docs, autocast) if val_docs else None
    total_w = sum(w for w, _ in step_times)
    total_s = sum(s for _, s in step_times)
    return {
        "model": model,
        "history": history,
        "validation_logits": val_logits,
        "schedule": schedule,
        "amp": amp,
        "gradient_checkpointing": checkpointing,
        "device": device,
        "steps": steps,
        "windows": windows,
        "train_seconds": round(time.perf_counter() - started, 2),
        "windows_per_s": round(total_w / total_s, 3) if total_s else None,
        "windows_per_step": round(total_w / len(step_times), 2) if step_times else None,
        "windows_per_s_after_first": _rate(step_times[1:]),
    }
