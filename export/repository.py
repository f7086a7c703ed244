"""Writing the Triton model repository: configs per profile, model.py sources, side files.

One set of ONNX files, three ways to serve them (DESIGN.md):

* ``portable``: encoder and aggregator are Python-backend models that run onnxruntime over
  the ONNX files (any Triton, e.g. the one from PyPI); the embedded default and the tests;
* ``cpu``: Triton's onnxruntime backend on CPU (FP32 or INT8);
* ``gpu``: Triton's onnxruntime backend on GPU, FP16 with FP32 I/O, optional TensorRT.

Every config is generated here from one set of names, so a profile cannot drift from the
ONNX files it serves; tests parse them with Triton's own protobuf schema.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.chunking import ChunkingConfig

PROFILES = ("portable", "cpu", "gpu")
# The committed sources of the Python-backend models (model_repository/ in this checkout).
SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
ENSEMBLE = "document_classifier"


@dataclass
class ServingOptions:
    """What the configs need beyond the model files; defaults are justified in README."""

    profile: str = "portable"
    max_batch_size: int = 64  # encoder: >= max_chunks, so any admitted document fits
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    queue_delay_us: int = 2000
    chunker_instances: int = 2
    encoder_instances: int = 1
    ort_threads: int = 0  # 0: onnxruntime's default (all cores)
    tensorrt: bool = False
    response_cache: bool = False
    warmup: bool = True
    extra: dict = field(default_factory=dict)


def _dims(values) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(name: str, dtype: str, dims, extra: str = "") -> str:
    return f'  {{ name: "{name}", data_type: {dtype}, dims: {_dims(dims)}{extra} }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _params(params: dict[str, str]) -> str:
    return "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in params.items()
    )


def chunker_config(opts: ServingOptions) -> str:
    return (
        'name: "chunker"\nbackend: "python"\nmax_batch_size: 0\n'
        + _io("input", [_tensor("TEXT", "TYPE_STRING", [1])])
        + _io(
            "output",
            [
                _tensor("input_ids", "TYPE_INT64", [-1, -1]),
                _tensor("attention_mask", "TYPE_INT64", [-1, -1]),
                _tensor("CHUNK_SPANS", "TYPE_INT64", [-1, 2]),
                _tensor("NUM_CHUNKS", "TYPE_INT32", [1]),
            ],
        )
        + f"instance_group [ {{ kind: KIND_CPU, count: {opts.chunker_instances} }} ]\n"
        + ("response_cache { enable: true }\n" if opts.response_cache else "")
    )


def encoder_config(opts: ServingOptions, vector_size: int, chunking: ChunkingConfig) -> str:
    if opts.max_batch_size < chunking.max_chunks:
        raise ValueError(
            f"encoder max_batch_size {opts.max_batch_size} < max_chunks {chunking.max_chunks}: "
            "a long document would fail inside Triton"
        )
    preferred = [b for b in opts.preferred_batch_sizes if b <= opts.max_batch_size]
    head = 'name: "encoder"\n'
    if opts.profile == "portable":
        head += 'backend: "python"\n' + _params(
            {"onnx_file": "model.onnx", "ort_threads": str(opts.ort_threads)}
        )
    else:
        head += 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
    kind = "KIND_GPU" if opts.profile == "gpu" else "KIND_CPU"
    text = (
        head
        + f"max_batch_size: {opts.max_batch_size}\n"
        + _io(
            "input",
            [
                _tensor("input_ids", "TYPE_INT64", [-1]),
                _tensor("attention_mask", "TYPE_INT64", [-1]),
            ],
        )  # fmt: skip
        + _io("output", [_tensor("chunk_vectors", "TYPE_FP32", [vector_size])])
        + "dynamic_batching {\n"
        + f"  preferred_batch_size: {_dims(preferred)}\n"
        + f"  max_queue_delay_microseconds: {opts.queue_delay_us}\n"
        + "}\n"
        + f"instance_group [ {{ kind: {kind}, count: {opts.encoder_instances} }} ]\n"
    )
    if opts.profile != "portable" and opts.ort_threads:
        text += _params({"intra_op_thread_count": str(opts.ort_threads)})
    if opts.profile == "gpu" and opts.tensorrt:
        text += tensorrt_block(opts, chunking)
    if opts.warmup and opts.profile != "portable":
        text += warmup_block(chunking)
    return text


def tensorrt_block(opts: ServingOptions, chunking: ChunkingConfig) -> str:
    """TensorRT accelerator over the plain FP32 graph, FP16 engines, cached on disk.

    Shape profiles: batch 1..max_batch_size for each sequence length the chunker emits.
    """
    lo = min(chunking.seq_buckets)
    hi = chunking.max_length
    mb = opts.max_batch_size
    params = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(4 << 30),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": "/tmp/longdoc_trt_cache",
        "trt_profile_min_shapes": f"input_ids:1x{lo},attention_mask:1x{lo}",
        "trt_profile_opt_shapes": f"input_ids:{max(preferred_or(opts))}x{hi},"
        f"attention_mask:{max(preferred_or(opts))}x{hi}",
        "trt_profile_max_shapes": f"input_ids:{mb}x{hi},attention_mask:{mb}x{hi}",
    }
    inner = "".join(
        f'        parameters {{ key: "{k}" value: "{v}" }}\n' for k, v in params.items()
    )
    return (
        "optimization { execution_accelerators {\n"
        "  gpu_execution_accelerator : [ {\n"
        '        name : "tensorrt"\n' + inner + "  } ]\n"
        "} }\n"
    )


def preferred_or(opts: ServingOptions) -> tuple[int, ...]:
    return tuple(opts.preferred_batch_sizes) or (opts.max_batch_size,)


def warmup_block(chunking: ChunkingConfig) -> str:
    """One warm-up batch per sequence length, so no user pays for lazy initialisation."""
    blocks = []
    for seq in chunking.seq_buckets:
        inputs = "".join(
            f'  inputs {{ key: "{name}" value: {{ data_type: TYPE_INT64, dims: [ {seq} ], '
            "random_data: false zero_data: true } }\n"
            for name in ("input_ids", "attention_mask")
        )
        blocks.append(f'model_warmup {{\n  name: "seq{seq}"\n  batch_size: 8\n{inputs}}}\n')
    return "".join(blocks)


def aggregator_config(opts: ServingOptions, vector_size: int, num_labels: int) -> str:
    head = 'name: "aggregator"\n'
    if opts.profile == "portable":
        head += 'backend: "python"\n' + _params({"onnx_file": "model.onnx", "ort_threads": "1"})
    else:
        head += 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
    # The aggregator is tiny (a few matrix-vector products): CPU even in the gpu profile.
    return (
        head
        + "max_batch_size: 0\n"
        + _io("input", [_tensor("chunk_vectors", "TYPE_FP32", [-1, vector_size])])
        + _io(
            "output",
            [
                _tensor("LOGITS", "TYPE_FP32", [num_labels]),
                _tensor("PROBABILITIES", "TYPE_FP32", [num_labels]),
                _tensor("CHUNK_LOGITS", "TYPE_FP32", [-1, num_labels]),
            ],
        )
        + "instance_group [ { kind: KIND_CPU, count: 1 } ]\n"
    )


def ensemble_config(num_labels: int, opts: ServingOptions) -> str:
    labels = ', label_filename: "labels.txt"'
    return (
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
        + _io("input", [_tensor("TEXT", "TYPE_STRING", [1])])
        + _io(
            "output",
            [
                _tensor("LOGITS", "TYPE_FP32", [num_labels], labels),
                _tensor("PROBABILITIES", "TYPE_FP32", [num_labels], labels),
                _tensor("NUM_CHUNKS", "TYPE_INT32", [1]),
                _tensor("CHUNK_LOGITS", "TYPE_FP32", [-1, num_labels]),
                _tensor("CHUNK_SPANS", "TYPE_INT64", [-1, 2]),
            ],
        )
        + """ensemble_scheduling {
  step [
    {
      model_name: "chunker"
      model_version: -1
      input_map { key: "TEXT" value: "TEXT" }
      output_map { key: "input_ids" value: "_input_ids" }
      output_map { key: "attention_mask" value: "_attention_mask" }
      output_map { key: "CHUNK_SPANS" value: "CHUNK_SPANS" }
      output_map { key: "NUM_CHUNKS" value: "NUM_CHUNKS" }
    },
    {
      model_name: "encoder"
      model_version: -1
      input_map { key: "input_ids" value: "_input_ids" }
      input_map { key: "attention_mask" value: "_attention_mask" }
      output_map { key: "chunk_vectors" value: "_chunk_vectors" }
    },
    {
      model_name: "aggregator"
      model_version: -1
      input_map { key: "chunk_vectors" value: "_chunk_vectors" }
      output_map { key: "LOGITS" value: "LOGITS" }
      output_map { key: "PROBABILITIES" value: "PROBABILITIES" }
      output_map { key: "CHUNK_LOGITS" value: "CHUNK_LOGITS" }
    }
  ]
}
"""
    )


def write_configs(
    repo: Path, opts: ServingOptions, vector_size: int, labels: list[str], chunking: ChunkingConfig
) -> None:
    """All four config.pbtxt files and the Python-backend sources the profile needs."""
    if opts.profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} (got {opts.profile!r})")
    for name in ("chunker", "encoder", "aggregator", ENSEMBLE):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / "chunker" / "config.pbtxt").write_text(chunker_config(opts))
    (repo / "encoder" / "config.pbtxt").write_text(encoder_config(opts, vector_size, chunking))
    (repo / "aggregator" / "config.pbtxt").write_text(
        aggregator_config(opts, vector_size, len(labels))
    )
    (repo / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(len(labels), opts))
    label_text = "\n".join(labels) + "\n"
    (repo / ENSEMBLE / "labels.txt").write_text(label_text)
    (repo / "aggregator" / "labels.txt").write_text(label_text)

    python_models = ["chunker"] + (["encoder", "aggregator"] if opts.profile == "portable" else [])
    for name in ("chunker", "encoder", "aggregator"):
        target = repo / name / "1" / "model.py"
        source = SOURCE_REPOSITORY / name / "1" / "model.py"
        if name in python_models:
            if target.resolve() != source.resolve():
                shutil.copy(source, target)
        elif target.exists() and target.resolve() != source.resolve():
            target.unlink()


def write_chunker_files(repo: Path, tokenizer_path: Path, chunking: ChunkingConfig) -> None:
    """The chunker reads its tokenizer and parameters from its own model directory."""
    target = repo / "chunker" / "1"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer_path, target / "tokenizer.json")
    chunking.save(target / "chunking.json")
