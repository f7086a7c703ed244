"""`longdoc export` end to end: load -> ONNX -> precision -> repository -> parity report."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.export import parity, precision, repository, to_onnx

from longdoc.checkpoint import LoadedModel, load_checkpoint, load_preset
from longdoc.chunking import ChunkingConfig


@dataclass
class ExportSpec:
    """Everything `longdoc export` was asked for (CLI flags map one to one)."""

    output: Path
    checkpoint: Path | None = None
    preset: str | None = None
    head: str | None = None
    precision: str = "fp32"
    profile: str = "portable"
    random_head: bool = False
    num_labels: int = 2
    seed: int = 0
    tokenizer: Path | None = None
    chunking: dict = field(default_factory=dict)  # overrides: max_length, overlap, ...
    serving: repository.ServingOptions = field(default_factory=repository.ServingOptions)
    parity_lengths: tuple[int, ...] = parity.DEFAULT_LENGTHS
    skip_parity: bool = False


def load(spec: ExportSpec) -> LoadedModel:
    if (spec.checkpoint is None) == (spec.preset is None):
        raise ValueError("give exactly one of --checkpoint DIR or --preset NAME")
    if spec.checkpoint is not None:
        if not spec.checkpoint.is_dir():
            raise FileNotFoundError(f"checkpoint directory {spec.checkpoint} does not exist")
        model = load_checkpoint(
            spec.checkpoint, spec.head, random_head=spec.random_head, num_labels=spec.num_labels,
            seed=spec.seed, tokenizer_dir=spec.tokenizer,
        )  # fmt: skip
    else:
        model = load_preset(
            spec.preset, spec.head or "logits-mean", num_labels=spec.num_labels, seed=spec.seed,
            tokenizer_dir=spec.tokenizer,
        )  # fmt: skip
    if spec.chunking:
        merged = {**model.chunking.to_dict(), **spec.chunking}
        model.chunking = ChunkingConfig.from_dict(merged)
    if model.head == "transformer":
        positions = model.head_options.get("max_positions", 256)
        if model.chunking.max_chunks > positions:
            raise ValueError(
                f"max_chunks {model.chunking.max_chunks} exceeds the transformer head's "
                f"{positions} chunk positions"
            )
    return model


def run(spec: ExportSpec, log=print) -> dict:
    """Write the model repository at ``spec.output`` and return the export report."""
    started = time.perf_counter()
    model = load(spec)
    out = Path(spec.output)
    serving = spec.serving
    serving.profile = spec.profile
    if serving.max_batch_size < model.chunking.max_chunks:
        serving.max_batch_size = model.chunking.max_chunks
    log(
        f"model: {model.source}, head {model.head}, {model.num_labels} labels, "
        f"hidden {model.hidden_size}; chunking {model.chunking.to_dict()}"
    )
    encoder_path = out / "encoder" / "1" / "model.onnx"
    aggregator_path = out / "aggregator" / "1" / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="longdoc-export-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        log("exporting encoder to ONNX (FP32)...")
        to_onnx.export_encoder(model, plain)
        fused = not (spec.profile == "gpu" and serving.tensorrt)
        log(f"converting encoder: {spec.precision}{'' if fused else ' (plain graph, TensorRT)'}")
        encoder_path.parent.mkdir(parents=True, exist_ok=True)
        precision.convert(
            plain, encoder_path, spec.precision, model.num_attention_heads, model.hidden_size,
            fused=fused,
        )  # fmt: skip
    log("exporting aggregator to ONNX (FP32)...")
    to_onnx.export_aggregator(model, aggregator_path)
    repository.write_chunker_files(out, model.tokenizer_path, model.chunking)
    repository.write_configs(out, serving, model.vector_size, model.labels, model.chunking)

    report: dict = {
        "source": model.source,
        "head": model.head,
        "labels": model.labels,
        "precision": spec.precision,
        "profile": spec.profile,
        "tensorrt": serving.tensorrt,
        "chunking": model.chunking.to_dict(),
        "encoder": precision.describe(encoder_path),
        "aggregator": precision.describe(aggregator_path),
    }
    if not spec.skip_parity:
        log("checking parity against PyTorch on real documents...")
        result = parity.check(model, out, spec.precision, parity.parity_texts(spec.parity_lengths))
        log(result.summary())
        report["parity"] = result.to_dict()
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if "parity" in report and not report["parity"]["passed"]:
        raise parity.ParityError(
            f"parity failed: max |delta logits| {report['parity']['max_abs_logits']:.3g} > "
            f"{report['parity']['tolerance']:g} or argmax agreement "
            f"{report['parity']['argmax_agreement']:.0%} too low (report: {out}/export_report.json)"
        )
    return report
