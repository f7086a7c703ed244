"""``train(cfg)``: one training run from data on disk to a checkpoint and its record.

The steps, in order: check the configuration, read the data and its labels, pick the
encoder (a directory, a seeded preset written to the cache, or MiniLM), run the trainer the
configuration asks for (frozen, end to end, TF-IDF), choose the decision (multi-label: the
thresholds, on the validation split), save the checkpoint in the format ``longdoc export``
reads, then write ``training.json`` (configuration, data checksums, machine, per-epoch
history, timings, decision) and ``training.png``.

The problem comes from the data (label sets make it multi-label: ``data.problem_of``);
``--problem`` states it, and data of the other kind is refused (``data.read_dataset``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from longdoc.contract import CONFIG_FILE, TOKENIZER_FILE, TRAINING_JSON, TRAINING_PNG
from longdoc.data import (
    check_known_labels,
    check_training_labels,
    data_hash,
    problem_of,
    read_dataset,
)
from longdoc.decision import MULTI_LABEL, Decision
from longdoc.training.common import Split, choose_decision, holdout_split, multi_hot
from longdoc.training.config import (
    HOLDOUT_SEED,
    TrainConfig,
    derive_defaults,
    validate,
)

# Figures a trainer may report, copied into training.json when it does.
RESULT_KEYS = (
    "feature_seconds",
    "train_seconds",
    "feature_cache",
    "feature_windows_computed",
    "schedule",
    "windows",
    "amp",
    "gradient_checkpointing",
    "device",
    "steps",
    "windows_per_s",
    "windows_per_step",
    "windows_per_s_after_first",
)


def machine() -> dict:
    """``longdoc.machine.machine_info()`` plus what training adds: the torch version and
    CUDA device, and the keys ``training.json`` has always had (``cpus``, ``load_average``)."""
    import torch

    from longdoc.machine import machine_info

    info = machine_info()
    info["cpus"] = os.cpu_count()
    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if info.get("loadavg_start"):
        info["load_average"] = info["loadavg_start"][0]
    return info


def find_manifest(path: Path) -> dict | None:
    """The ``manifest.json`` that ``longdoc data`` writes, in the data folder or up to two
    folders above it (its checksum identifies the corpus in the record)."""
    for parent in [Path(path), *Path(path).parents][:3]:
        candidate = parent / "manifest.json"
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError:
                return None
    return None


def resolve_encoder(encoder: Path | None, preset: str | None, cache_dir: Path, seed: int = 0):
    """The encoder directory of a run: a given one, a seeded preset written to the cache,
    or MiniLM."""
    from longdoc.checkpoint import materialize_preset, minilm_dir

    if preset:
        encoder_dir = materialize_preset(preset, seed, Path(cache_dir))
    else:
        encoder_dir = Path(encoder) if encoder else minilm_dir()
    if not (encoder_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{encoder_dir}: not a Hugging Face BERT directory")
    return encoder_dir


def _save(
    cfg: TrainConfig, encoder_dir: Path, labels: list[str], result: dict, decision: Decision
) -> None:
    from longdoc.checkpoint import save_checkpoint
    from longdoc.training.common import encoder_tokenizer

    model = result.get("model")  # end to end: the fine-tuned encoder and its head
    save_checkpoint(
        cfg.output,
        head=cfg.head,
        labels=labels,
        chunking=cfg.saved_chunking(),
        encoder_dir=encoder_dir,
        tokenizer=encoder_tokenizer(encoder_dir) / TOKENIZER_FILE,
        head_module=model.aggregator.cpu() if model is not None else result["module"],
        bert=model.encoder.bert if model is not None else None,
        head_options=cfg.head_options(),
        decision=decision,
    )


def split_data(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[Split, list[str], dict, str]:
    """Read the data; without ``--validation`` hold out a stratified slice of ``--train``
    for early stopping and model choice (said in the log). Returns the split, the labels,
    what the record says about the validation data and the problem (``--problem``, which
    the data must agree with, or the data's own; multi-label: the labels are the union of
    the sets, and the validation data must be multi-label too)."""
    train_ex = read_dataset(cfg.train, cfg.problem)
    problem = problem_of(train_ex)
    labels = check_training_labels(train_ex, str(cfg.train))
    if cfg.validation:
        val_ex = read_dataset(cfg.validation, problem)
        check_known_labels(val_ex, labels)
        return Split(train_ex, val_ex), labels, {"source": "--validation"}, problem
    if cfg.baseline or not cfg.validation_fraction:
        reason = "TF-IDF has no epochs to choose" if cfg.baseline else "--validation-fraction 0"
        log(f"no --validation: no validation data ({reason}); the last epoch is kept")
        return Split(train_ex, []), labels, {"source": "none", "reason": reason}, problem
    split = holdout_split(train_ex, cfg.validation_fraction, HOLDOUT_SEED)
    if not split.validation:  # one document per label: nothing can be held out
        log("no --validation, and no label has two documents to hold one out: no validation")
        none = {"source": "none", "reason": "too few documents"}
        return Split(train_ex, []), labels, none, problem
    log(
        f"no --validation: holding out {len(split.validation)} of {len(train_ex)} training "
        f"documents ({cfg.validation_fraction:.0%} of each label, stratified, seed "
        f"{HOLDOUT_SEED}) for early stopping and model choice; training on {len(split.train)}"
    )
    choice = {
        "source": "held out of --train",
        "fraction": cfg.validation_fraction,
        "seed": HOLDOUT_SEED,
        "documents": len(split.validation),
        "ids": [e.id for e in split.validation],
    }
    return split, labels, choice, problem


def train(cfg: TrainConfig, log: Callable[[str], None] = print, save: bool = True) -> dict:
    """Train and save; returns the training record (also written to training.json).
    ``save=False`` (the sweep's trials) writes the record and the plot, not the weights."""
    validate(cfg)
    derived = derive_defaults(cfg)
    if derived:
        shown = ", ".join(f"{k} {v}" for k, v in derived.items())
        log(f"defaults for this regime: {shown}")
    started = time.perf_counter()
    chunking = cfg.chunking_config()
    split, labels, validation_choice, problem = split_data(cfg, log)
    train_ex, val_ex = split.train, split.validation
    if problem == MULTI_LABEL:
        log(f"multi-label: {len(labels)} labels, a sigmoid per label (binary cross-entropy)")
    train_data = {"path": str(cfg.train), "documents": len(train_ex), "hash": data_hash(train_ex)}
    record: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "choices": {"derived": derived, "validation": validation_choice},
        "labels": labels,
        "problem": problem,
        "data": {"train": train_data},
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if val_ex:
        record["data"]["validation"] = {
            "path": str(cfg.validation or cfg.train),
            "documents": len(val_ex),
            "hash": data_hash(val_ex),
        }
    manifest = find_manifest(cfg.train)
    if manifest:
        record["data"]["manifest_checksum"] = manifest.get("checksum")
    cfg.output.mkdir(parents=True, exist_ok=True)
    if cfg.baseline == "tfidf":
        from longdoc.training.tfidf import train_tfidf

        record["kind"] = "tfidf"
        result = train_tfidf(cfg, train_ex, val_ex, labels, log, problem)
        decision = result["decision"]
    else:
        from longdoc.features import default_cache_dir, encoder_hash

        cfg.cache_dir = cfg.cache_dir or default_cache_dir()
        encoder_dir = resolve_encoder(cfg.encoder, cfg.preset, cfg.cache_dir, cfg.seed)
        record["encoder"] = {
            "path": str(encoder_dir),
            "hash": encoder_hash(encoder_dir),
            "frozen": cfg.freeze_encoder,
        }
        record["kind"] = "frozen" if cfg.freeze_encoder else "end-to-end"
        record["chunking"] = chunking.to_dict()
        record["window"] = cfg.window
        if cfg.freeze_encoder:
            from longdoc.training.frozen import train_frozen

            result = train_frozen(cfg, encoder_dir, split, labels, log, problem)
        else:
            from longdoc.training.end_to_end import train_end_to_end

            result = train_end_to_end(cfg, encoder_dir, train_ex, val_ex, labels, log, problem)
        val_truth = multi_hot(val_ex, labels) if val_ex else None
        decision = choose_decision(
            problem, labels, result.get("validation_logits"), val_truth, cfg.thresholds, log
        )
        if save:
            _save(cfg, encoder_dir, labels, result, decision)
    # how the decision was made: the argmax (single-label), thresholds chosen on validation
    # (``chosen_on``: both candidates' validation micro-F1; ``kind``: the one used), or 0.5
    if not decision.multi_label:
        chosen = "argmax"
    else:
        chosen = "on validation" if decision.chosen_on else "without validation data"
    record["decision"] = {**decision.to_dict(), "chosen": chosen}
    record["history"] = result["history"]
    record.update({key: result[key] for key in RESULT_KEYS if key in result})
    best = [r for r in result["history"] if r.get("best")] or result["history"][-1:]
    record["best_epoch"] = best[-1]["epoch"]
    record["best"] = best[-1]
    record["seconds"] = round(time.perf_counter() - started, 1)
    (cfg.output / TRAINING_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    try:
        from longdoc.training.plots import plot_history

        kind = "frozen" if cfg.freeze_encoder else ""
        title = f"{cfg.baseline or cfg.head} {kind} seed {cfg.seed}"
        plot_history(result["history"], cfg.output / TRAINING_PNG, title)
    except ImportError:
        log("matplotlib is not installed: no training.png")
    log(f"trained in {record['seconds']:.0f} s -> {cfg.output}")
    return record
