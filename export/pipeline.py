"""`longdoc export` end to end: load -> ONNX -> precision -> repository -> parity report.

The export report, ``export_report.json`` at the repository root (``REPORT_FORMAT`` 1):

* ``format``: this layout's version;
* ``source``, ``head``, ``labels``: the model;
* ``decision``: how logits become labels (``longdoc.decision.Decision.to_dict``: ``problem``
  single-label or multi-label, ``kind``, multi-label ``thresholds`` in label order), baked
  into the aggregator graph (its ``DECISIONS`` output) and written next to ``labels.txt`` as
  ``document_classifier/decision.json``;
* ``precision``: the encoder precision served (``fp16`` with ``--tensorrt`` means TensorRT
  FP16 engines built from the plain FP32 file); ``profile``; ``tensorrt``;
* ``chunking``: ``chunker/1/chunking.json`` (max_length, overlap, max_chunks, overflow,
  strategy, seq_buckets, max_bytes, max_windows, format);
* ``serving``: the numbers the configs were built from (``export.sizing.Sizing``):
  ``profile``, ``backend``, ``max_chunks``, ``seq_buckets``, ``max_batch_size`` (encoder
  windows per batch), ``preferred_batch_sizes``, ``queue_delay_us``, ``max_queue_size``,
  ``queue_timeout_us``, ``instances`` and ``kinds`` (per model: count, ``cpu``/``gpu``),
  ``ort_threads`` (encoder/aggregator, 0: all cores), ``ort_batch`` (portable encoder:
  windows per onnxruntime call, 0: the whole batch), ``tensorrt``, ``trt_shapes``
  (min/opt/max [batch, seq] or null), ``warmup`` ([seq, batch] per warm-up request),
  ``response_cache``, ``slice_windows`` and ``inflight_slices`` (the dispatcher's pacing);
  each field is commented in ``Sizing``. Read these instead of parsing config.pbtxt;
* ``encoder``, ``aggregator``: facts of the ONNX files (``export.graph.onnx_facts``:
  precision, params, bytes, initializer_dtypes, fused_ops, contrib_domains);
* ``architecture``: the encoder's ``layers``, ``hidden``, ``ffn``, ``heads``, ``vocab``,
  ``max_positions`` (from the checkpoint's config: what a FLOP count needs, without
  reading the graph);
* ``parity`` (absent with ``--skip-parity``): ``export.parity.ParityReport``; its
  ``precision`` is that of the graph checked and ``checked`` says which file that was;
* ``int8`` (INT8 exports only): the ``quantize_dynamic`` settings, the exporting CPU's
  instruction sets and integer kernel path (``vnni`` or ``avx2``), and what INT8 gives on
  such a CPU (``longdoc.machine.int8_serving_note``); ``longdoc serve`` says the same of
  the serving CPU, which may differ;
* ``seconds``: how long the export took.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.export import parity, precision, repository, sizing, to_onnx
from longdoc.export.graph import onnx_facts

from longdoc import machine
from longdoc.checkpoint import LoadedModel, load_checkpoint, load_preset
from longdoc.chunking import ChunkingConfig
from longdoc.contract import (
    AGGREGATOR,
    ENCODER,
    EXPORT_REPORT,
    FP32_FALLBACK_FILE,
    ONNX_FILE,
)

REPORT_FORMAT = 1


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
    serving: sizing.ServingOptions = field(default_factory=sizing.ServingOptions)
    parity_lengths: tuple[int, ...] = parity.DEFAULT_LENGTHS
    skip_parity: bool = False


def load(spec: ExportSpec) -> LoadedModel:
    if (spec.checkpoint is None) == (spec.preset is None):
        raise ValueError("give exactly one of --checkpoint DIR or --preset NAME")
    if spec.checkpoint is not None:
        if not spec.checkpoint.is_dir():
            raise FileNotFoundError(f"checkpoint directory {spec.checkpoint} does not exist")
        model = load_checkpoint(
            spec.checkpoint,
            spec.head,
            random_head=spec.random_head,
            num_labels=spec.num_labels,
            seed=spec.seed,
            tokenizer_dir=spec.tokenizer,
        )
    else:
        model = load_preset(
            spec.preset,
            spec.head or "logits-mean",
            num_labels=spec.num_labels,
            seed=spec.seed,
            tokenizer_dir=spec.tokenizer,
        )
    if spec.chunking:
        merged = {**model.chunking.to_dict(), **spec.chunking}
        model.chunking = ChunkingConfig.from_dict(merged)
    # A transformer head reads documents longer than its max_positions in segments of
    # max_positions windows (longdoc.heads.TransformerHead): no limit to check here.
    return model


def architecture(model: LoadedModel) -> dict:
    """The encoder's sizes, from the Hugging Face config of the exported BERT."""
    config = model.encoder.bert.config
    return {
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "ffn": config.intermediate_size,
        "heads": config.num_attention_heads,
        "vocab": config.vocab_size,
        "max_positions": config.max_position_embeddings,
    }


def run(spec: ExportSpec, log=print) -> dict:
    """Write the model repository at ``spec.output`` and return the export report."""
    started = time.perf_counter()
    model = load(spec)
    out = Path(spec.output)
    serving = spec.serving
    serving.profile = spec.profile
    # refuses bad serving options before any slow step
    planned = sizing.plan(serving, model.chunking)
    log(
        f"model: {model.source}, head {model.head}, {model.num_labels} labels, "
        f"hidden {model.hidden_size}; chunking {model.chunking.to_dict()}; encoder "
        f"max_batch_size {planned.max_batch_size}, documents sent to it in slices of "
        f"{planned.slice_windows} windows"
    )
    encoder_path = out / ENCODER / "1" / ONNX_FILE
    aggregator_path = out / AGGREGATOR / "1" / ONNX_FILE
    with tempfile.TemporaryDirectory(prefix="longdoc-export-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        log("exporting encoder to ONNX (FP32)...")
        to_onnx.export_encoder(model, plain)
        fused = not (spec.profile == "gpu" and serving.tensorrt)
        log(f"converting encoder: {spec.precision}{'' if fused else ' (plain graph, TensorRT)'}")
        encoder_path.parent.mkdir(parents=True, exist_ok=True)
        # portable INT8: the FP32 graph goes along, served on CPUs without VNNI
        fallback = encoder_path.with_name(FP32_FALLBACK_FILE)
        precision.convert(
            plain,
            encoder_path,
            spec.precision,
            model.num_attention_heads,
            model.hidden_size,
            fused=fused,
            fp32_fallback=fallback if spec.profile == "portable" else None,
        )
    log("exporting aggregator to ONNX (FP32)...")
    to_onnx.export_aggregator(model, aggregator_path)
    repository.write_chunker_files(out, model.tokenizer_path, model.chunking)
    # labels.txt and decision.json (the served thresholds, inspectable) in the ensemble
    served = repository.write_configs(
        out, serving, model.vector_size, model.labels, model.chunking, model.decision
    )
    encoder_facts = onnx_facts(encoder_path)

    report: dict = {
        "format": REPORT_FORMAT,
        "source": model.source,
        "head": model.head,
        "labels": model.labels,
        "decision": model.decision.to_dict(),
        "precision": spec.precision,
        "profile": spec.profile,
        "tensorrt": serving.tensorrt,
        "chunking": model.chunking.to_dict(),
        "serving": served.to_dict(),
        "encoder": encoder_facts,
        "aggregator": onnx_facts(aggregator_path),
        "architecture": architecture(model),
    }
    if spec.precision == "int8":
        report["int8"] = {
            "settings": precision.INT8_SETTINGS,
            "export_cpu": {"isa": machine.isa(), "kernels": machine.int8_kernel_path()},
            "note": machine.int8_serving_note(),
            # what the portable encoder serves on a CPU without VNNI (None: INT8 everywhere)
            "fp32_fallback": FP32_FALLBACK_FILE if fallback.is_file() else None,
        }
        log(report["int8"]["note"])
    if not spec.skip_parity:
        # The check runs the encoder file in the repository: label it with that file's
        # precision (with --tensorrt the FP32 plain graph, not TensorRT's FP16 engines).
        checked = encoder_facts["precision"]
        what = f"{ENCODER}/1/{ONNX_FILE} ({checked} graph, onnxruntime CPU)"
        if serving.tensorrt:
            what += (
                "; TensorRT builds its FP16 engines from it when the model loads, which "
                "needs a GPU: gpu_checks/run_gpu_checks.py checks those"
            )
        log(f"checking parity against PyTorch on real documents: {what}...")
        result = parity.check(
            model, out, checked, parity.parity_texts(spec.parity_lengths), checked=what
        )
        log(result.summary())
        report["parity"] = result.to_dict()
        if fallback.is_file():
            what = f"{ENCODER}/1/{FP32_FALLBACK_FILE} (fp32 graph, served on CPUs without VNNI)"
            log(f"checking parity of the FP32 fallback: {what}...")
            extra = parity.check(
                model,
                out,
                "fp32",
                parity.parity_texts(spec.parity_lengths),
                checked=what,
                encoder=fallback,
            )
            log(extra.summary())
            report["int8"]["fp32_fallback_parity"] = extra.to_dict()
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    if "parity" in report and not report["parity"]["passed"]:
        raise parity.ParityError(
            f"parity failed: max |delta logits| {report['parity']['max_abs_logits']:.3g} > "
            f"{report['parity']['tolerance']:g} or argmax agreement "
            f"{report['parity']['argmax_agreement']:.0%} / decisions agreement "
            f"{report['parity']['decisions_agreement']:.0%} too low "
            f"(report: {out}/{EXPORT_REPORT})"
        )
    fallback_parity = report.get("int8", {}).get("fp32_fallback_parity")
    if fallback_parity and not fallback_parity["passed"]:
        raise parity.ParityError(
            f"parity of the FP32 fallback failed: max |delta logits| "
            f"{fallback_parity['max_abs_logits']:.3g} (report: {out}/{EXPORT_REPORT})"
        )
    return report
