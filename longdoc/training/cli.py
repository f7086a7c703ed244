"""`longdoc train`: the command line of :func:`longdoc.training.train`.

Flags map one to one onto :class:`~longdoc.training.TrainConfig` fields (built in one
place, `cli_options.config_from_args`); the chunking flags are the shared group that
`export` declares too, and are recorded in the checkpoint, so ``longdoc export
--checkpoint DIR`` needs none. The optimisation flags left unset take the defaults of the
run's regime (``config.regime_defaults``), which ``--help`` spells out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longdoc.cli_options import (
    UsageError,
    add_chunking_args,
    chunking_from_args,
    config_from_args,
)
from longdoc.contract import HEADS, PRESETS, PROBLEMS
from longdoc.data import DataError
from longdoc.training.config import (
    AMP_MODES,
    BASELINES,
    END_TO_END_DEFAULTS,
    FROZEN_DEFAULTS,
    FROZEN_TRANSFORMER_DEFAULTS,
    THRESHOLD_CHOICES,
    WINDOW_MODES,
    TrainConfig,
)


def _per_regime(name: str) -> str:
    frozen, transformer = FROZEN_DEFAULTS[name], FROZEN_TRANSFORMER_DEFAULTS[name]
    on_cache = f"{frozen}" if frozen == transformer else f"{frozen} ({transformer} transformer)"
    return (
        f"default: per regime, {on_cache} for a head on cached vectors "
        f"(--freeze-encoder), {END_TO_END_DEFAULTS[name]} end to end"
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Data and encoder flags, shared by `train` and `sweep`."""
    p.add_argument("--train", type=Path, required=True, help="label folders, .jsonl or .csv")
    p.add_argument(
        "--validation",
        type=Path,
        help="scores each epoch (early stopping, model choice); without it a stratified "
        "--validation-fraction of --train is held out (default: none)",
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.15,
        help="share of each label held out of --train when there is no --validation (0: none)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--encoder", type=Path, help="a BERT directory (default: all-MiniLM-L6-v2)")
    src.add_argument("--preset", choices=PRESETS, help="a seeded random architecture")
    p.add_argument(
        "--cache-dir", type=Path, help="feature cache (default: $LONGDOC_CACHE or runs/cache)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a head (frozen encoder or end to end) on labelled documents",
        description="Train a long-document classifier on the windows it will be served on; "
        "writes a checkpoint `longdoc export --checkpoint` reads as is, and training.json "
        "(every choice made, the defaults derived, the per-epoch log).",
    )
    add_data_args(p)
    p.add_argument(
        "--head",
        choices=HEADS,
        default="mean-pool",
        help="how window vectors become the document's logits (multi-label with a logits-* "
        "head: logits-max is the natural pooling, a label is present if one window shows it)",
    )
    p.add_argument(
        "--problem",
        choices=PROBLEMS,
        help="default: from the data (documents with label sets, JSONL 'labels' or CSV a|b, "
        "are multi-label: a sigmoid per label); single-label on such data is refused",
    )
    p.add_argument(
        "--thresholds",
        choices=THRESHOLD_CHOICES,
        default="global",
        help="multi-label: one decision threshold for every label, or one per label, chosen "
        "for micro-F1 on the validation data (0.5 without validation data)",
    )
    p.add_argument("--baseline", choices=BASELINES, help="TF-IDF + logistic regression instead")
    p.add_argument(
        "--freeze-encoder", action="store_true", help="train the head on cached window vectors"
    )
    p.add_argument(
        "--window",
        choices=WINDOW_MODES,
        default="chunks",
        help="head_tail: one window of the first 128 + last 382 tokens (baseline)",
    )
    add_chunking_args(p, "chunking (recorded in the checkpoint; export reuses it)")
    t = p.add_argument_group(
        "optimisation (unset: the regime's defaults, recorded in training.json)"
    )
    t.add_argument("--epochs", type=int, help=f"most epochs ({_per_regime('epochs')})")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=16, help="documents per batch")
    t.add_argument("--lr", type=float, help=f"head learning rate ({_per_regime('lr')})")
    t.add_argument("--encoder-lr", type=float, default=3e-5, help="end to end: the encoder's")
    t.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="end to end: share of the steps with a linear warm-up, then linear decay to 0",
    )
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument(
        "--train-windows",
        type=int,
        metavar="K",
        help="sample K windows per document per step (all at evaluation; default: all)",
    )
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument(
        "--patience",
        type=int,
        help=f"early stopping: epochs without a validation gain ({_per_regime('patience')})",
    )
    t.add_argument(
        "--amp",
        choices=AMP_MODES,
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
        help="torch CPU threads (0: 1 for frozen heads, torch's default end to end)",
    )
    h = p.add_argument_group("transformer head")
    h.add_argument("--layers", type=int, default=2)
    h.add_argument("--num-heads", type=int, default=4)
    h.add_argument("--ffn", type=int, help="feed-forward width (default: 4 x hidden)")
    h.add_argument("--max-positions", type=int, default=256)
    a = p.add_argument_group("attention head (gated attention over the windows)")
    a.add_argument("--attention-size", type=int, default=128, help="width of its scoring layer")
    a.add_argument(
        "--per-label-attention",
        action="store_true",
        help="one attention per label (each label weighs its own windows) instead of one shared",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="DIR",
        help="end to end: start from the head of a (frozen) `longdoc train` output",
    )
    p.add_argument("--output", type=Path, required=True, help="the checkpoint folder to write")
    p.set_defaults(func=run)


def config_from_train_args(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration from the parsed flags."""
    return config_from_args(
        TrainConfig, args, chunking=chunking_from_args(args), progress=not args.no_progress
    )


def run(args: argparse.Namespace) -> int:
    from longdoc.training.trainer import train

    cfg = config_from_train_args(args)
    try:
        cfg.chunking_config()
        train(cfg)
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    return 0
