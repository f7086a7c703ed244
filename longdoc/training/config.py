"""What a training run is asked to do: `TrainConfig`, its defaults and its checks.

One dataclass carries a run from the command line (or a script, or `gpu_checks`) through
every trainer to `training.json`, where it is recorded field by field; the checks run before
any data is read, so a bad flag fails in a second, not after feature extraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from longdoc.chunking import ChunkingConfig
from longdoc.contract import HEADS, PROBLEMS

# "chunks": the serving windows; "head_tail": one window of the first 128 and last tokens
# (Sun et al. 2019), a baseline only.
WINDOW_MODES = ("chunks", "head_tail")
BASELINES = ("tfidf",)
AMP_MODES = ("auto", "off", "bf16", "fp16")
# Multi-label: how decision thresholds are chosen on the validation split
# (``longdoc.decision.choose_thresholds``).
THRESHOLD_CHOICES = ("global", "per-label")


@dataclass
class TrainConfig:
    """Every choice of a training run; the defaults are `longdoc train`'s."""

    train: Path
    output: Path
    validation: Path | None = None
    encoder: Path | None = None
    preset: str | None = None
    head: str = "mean-pool"
    problem: str | None = None  # single-label | multi-label; None: what the data holds
    thresholds: str = "global"  # multi-label: global | per-label, chosen on validation
    baseline: str | None = None  # "tfidf"
    freeze_encoder: bool = False
    window: str = "chunks"
    chunking: dict = field(default_factory=dict)
    epochs: int | None = None  # None: derived per regime (`derive_defaults`)
    max_steps: int | None = None
    seed: int = 0
    batch_size: int = 16
    lr: float | None = None  # head learning rate; None: derived per regime
    encoder_lr: float = 3e-5
    weight_decay: float = 0.01
    dropout: float = 0.1
    train_windows: int | None = None
    grad_accum: int = 1
    patience: int | None = None  # None: derived per regime
    warmup: float = 0.1  # end to end: share of the steps with a rising learning rate
    validation_fraction: float = 0.15  # held out of --train when there is no --validation
    amp: str = "auto"  # auto | off | bf16 | fp16
    gradient_checkpointing: bool | None = None  # default: on CUDA, end to end
    device: str = "auto"
    cache_dir: Path | None = None
    layers: int = 2
    num_heads: int = 4
    ffn: int | None = None
    max_positions: int = 256
    attention_size: int = 128  # attention head: width of its gated scoring layer
    per_label_attention: bool = False  # attention head: one attention per label
    progress: bool = True
    threads: int = 0  # torch CPU threads (0: 1 for frozen heads, torch's default end to end)
    init_from: Path | None = None  # a `longdoc train` output: start from its head weights

    def chunking_config(self) -> ChunkingConfig:
        """The chunking to train with (validated: a bad combination raises ValueError)."""
        return ChunkingConfig.from_dict(self.chunking)

    def saved_chunking(self) -> ChunkingConfig:
        """The chunking recorded in the checkpoint: what serving must cut. A ``head_tail``
        model reads one window, so it is served with ``max_chunks 1``, overflow ``head``."""
        chunking = self.chunking_config()
        if self.window == "head_tail":
            return ChunkingConfig.from_dict(
                {**chunking.to_dict(), "max_chunks": 1, "overflow": "head"}
            )
        return chunking

    def head_options(self) -> dict:
        """The transformer or attention head's sizes (recorded in ``head.json``); nothing
        for the others. Positions cover ``max_chunks`` so that a capped document fits in one
        segment."""
        if self.head == "attention":
            return {"attention_size": self.attention_size, "per_label": self.per_label_attention}
        if self.head != "transformer":
            return {}
        options = {
            "layers": self.layers,
            "num_heads": self.num_heads,
            "max_positions": max(self.max_positions, self.chunking_config().max_chunks),
        }
        if self.ffn:
            options["ffn"] = self.ffn
        return options


# Defaults per regime: what `longdoc train` uses for a flag left unset. A head on cached
# window vectors is a small convex-ish problem with few steps per epoch (1,366 documents
# are 86 batches): it needs a larger learning rate and more epochs than fine-tuning, and
# early stopping ends it (the ACCURACY.md settings; 10 epochs at 1e-3 left a 19-class head
# at chance on 159 documents). The transformer head is a 2-layer encoder: 1e-3 keeps it
# stable. End to end is the usual fine-tuning recipe (encoder 3e-5, warm-up, linear decay).
# The attention head takes mean-pool's defaults in both regimes: at initialisation its
# window scores are nearly equal, so it starts as mean-pool (a uniform mean of the window
# vectors into the same kind of linear classifier) and has the same convex-ish problem to
# solve first; its gate is one small layer, not the transformer's stack of blocks that
# needed the lower rate to stay stable. Multi-label runs take the same defaults (a sigmoid
# per label instead of a softmax changes the loss, not the scale of the problem).
FROZEN_DEFAULTS = {"lr": 1e-2, "epochs": 60, "patience": 10}
FROZEN_TRANSFORMER_DEFAULTS = {"lr": 1e-3, "epochs": 60, "patience": 10}
END_TO_END_DEFAULTS = {"lr": 1e-3, "epochs": 3, "patience": 2}
TFIDF_DEFAULTS = {"lr": None, "epochs": 1, "patience": 0}
# The held-out slice is drawn with a fixed seed, so every seed and every sweep point is
# scored on the same documents and their scores compare.
HOLDOUT_SEED = 0


def regime_defaults(cfg: TrainConfig) -> dict:
    """The optimisation defaults of the run's regime (frozen head, transformer head on
    cached vectors, end to end, TF-IDF)."""
    if cfg.baseline:
        return TFIDF_DEFAULTS
    if not cfg.freeze_encoder:
        return END_TO_END_DEFAULTS
    return FROZEN_TRANSFORMER_DEFAULTS if cfg.head == "transformer" else FROZEN_DEFAULTS


def derive_defaults(cfg: TrainConfig) -> dict:
    """Fill the optimisation fields left unset (None) from the regime's defaults, in place;
    returns what was derived (recorded in training.json, so a run says how it was set)."""
    derived = {}
    for name, value in regime_defaults(cfg).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
            derived[name] = value
    return derived


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError for a choice no trainer accepts (before any data is read)."""
    if cfg.head not in HEADS:
        raise ValueError(f"unknown head {cfg.head!r}; choose one of {', '.join(HEADS)}")
    if cfg.window not in WINDOW_MODES:
        raise ValueError(f"--window must be one of {WINDOW_MODES}")
    if cfg.baseline not in (None, *BASELINES):
        raise ValueError("--baseline must be 'tfidf'")
    if not 0 <= cfg.validation_fraction < 1:
        raise ValueError("--validation-fraction must be in [0, 1)")
    if not 0 <= cfg.warmup < 1:
        raise ValueError("--warmup must be in [0, 1)")
    if cfg.problem not in (None, *PROBLEMS):
        raise ValueError(f"--problem must be one of {', '.join(PROBLEMS)}")
    if cfg.thresholds not in THRESHOLD_CHOICES:
        raise ValueError(f"--thresholds must be one of {', '.join(THRESHOLD_CHOICES)}")
    if cfg.attention_size < 1:
        raise ValueError("--attention-size must be at least 1")
    cfg.chunking_config()
