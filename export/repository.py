"""Writing the Triton model repository: configs per profile, model.py sources, side files.

One set of ONNX files, three ways to serve them (DESIGN.md):

* ``portable``: encoder and aggregator are Python-backend models that run onnxruntime over
  the ONNX files (any Triton, e.g. the one from PyPI); the embedded default and the tests;
* ``cpu``: Triton's onnxruntime backend on CPU (FP32 or INT8);
* ``gpu``: Triton's onnxruntime backend on GPU, FP16 with FP32 I/O, optional TensorRT.

Every config is generated here from one set of names, so a profile cannot drift from the
ONNX files it serves; tests parse them with Triton's own protobuf schema. The gpu profile's
configs carry ``#`` comments with the arithmetic behind their numbers (docs/GPU.md has the
long form).
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path

from longdoc.chunking import ChunkingConfig
from longdoc.contract import PROFILES  # noqa: E402


def _source_repository() -> Path:
    """Where the committed Python-backend model.py files are: model_repository/ in a source
    checkout, else the copy a wheel install ships as package data (longdoc.model_sources)."""
    checkout = Path(__file__).resolve().parent.parent / "model_repository"
    if (checkout / "chunker" / "1" / "model.py").is_file():
        return checkout
    from importlib.util import find_spec

    spec = find_spec("longdoc.model_sources")  # a namespace package: no __init__.py
    if spec is None or not spec.submodule_search_locations:
        return checkout  # neither: export says which model.py is missing
    return Path(list(spec.submodule_search_locations)[0])


SOURCE_REPOSITORY = _source_repository()
ENSEMBLE = "document_classifier"

# Defaults per profile for the ServingOptions fields left at None. portable/cpu: the values
# measured on 2-core CPU machines (README); gpu: sized for bert-large at 512 tokens on one
# H100/H200 (docs/GPU.md, and the comments written into the gpu configs).
PROFILE_DEFAULTS: dict[str, dict] = {
    "portable": dict(
        preferred_batch_sizes=(8, 16, 32), queue_delay_us=2000, chunker_instances=2,
        encoder_instances=1, aggregator_instances=1, ort_batch=1,
    ),
    "cpu": dict(
        preferred_batch_sizes=(8, 16, 32), queue_delay_us=2000, chunker_instances=2,
        encoder_instances=1, aggregator_instances=1, ort_batch=0,
    ),
    "gpu": dict(
        preferred_batch_sizes=(32, 64), queue_delay_us=2000, chunker_instances=4,
        encoder_instances=2, aggregator_instances=1, ort_batch=0,
    ),
}  # fmt: skip

# Measured on the 2-core AMD EPYC dev machine (gpu_checks/results/cpu_tokenizer/): the
# chunker's tokenizer + windowing costs ~0.5 ms of one core per 512-token window.
TOKENIZER_MS_PER_CHUNK = 0.5
# A 1-window document in the served chunker (Triton 2.51 statistics, compute_infer +
# compute_output): ~0.67 ms, of which ~0.4 ms tokenizing; the rest is the Python backend.
CHUNKER_MS_PER_SHORT_DOCUMENT = 0.7
# DESIGN.md: bert-large, 512 tokens: ~335 GFLOP per chunk; ~790 TFLOP/s dense FP16 on one
# H100/H200 -> ~2,350 chunks/s ceiling; TensorRT reaches ~65% of peak -> ~1,500 chunks/s.
BERT_LARGE_GFLOP_PER_CHUNK = 335
GPU_FP16_TFLOPS = 790
GPU_CEILING_CHUNKS_PER_S = 2350
# An aggregator with at least this many weights goes to the GPU in the gpu profile (unless
# ServingOptions.aggregator_kind says otherwise). Measured on one CPU core: a transformer
# head over 1024-d vectors (16.8M weights) costs 1.75 ms for a 1-chunk document and 12.9 ms
# for 64 chunks; over 384-d vectors (2.4M) 0.16 / 1.5 ms; mean/linear heads ~0.02 ms.
AGGREGATOR_GPU_MIN_PARAMS = 4_000_000
TRT_CACHE_PATH = "/tmp/longdoc_trt_cache"


@dataclass
class ServingOptions:
    """What the configs need beyond the model files.

    Fields left at ``None`` take the profile's default (``PROFILE_DEFAULTS``); see
    ``resolved()``. The reasons for each default are in README / docs/GPU.md.
    """

    profile: str = "portable"
    max_batch_size: int = 64  # encoder: >= max_chunks, so any admitted document fits
    preferred_batch_sizes: tuple[int, ...] | None = None
    queue_delay_us: int | None = None
    chunker_instances: int | None = None
    encoder_instances: int | None = None  # per GPU for KIND_GPU
    ort_threads: int = 0  # 0: onnxruntime's default (all cores)
    # portable encoder: windows per onnxruntime call inside a Triton batch (0: the whole
    # batch in one call). On CPU one window per call measured fastest (BENCHMARKS.md "make it
    # fast": +13% FP32, +10% INT8 served): a 512-token window is already a large GEMM, and
    # a big batch only adds memory traffic. Triton still batches, which saves the per-request
    # Python-backend round trips.
    ort_batch: int | None = None
    tensorrt: bool = False
    response_cache: bool = False
    warmup: bool = True
    aggregator_kind: str | None = None  # "cpu" | "gpu"; None: by its size (gpu profile)
    aggregator_instances: int | None = None
    trt_cache_path: str = TRT_CACHE_PATH  # must be writable by the server (not /models)
    trt_workspace_bytes: int = 4 << 30
    # Encoder queue policy (RELIABILITY.md): over capacity, refuse fast instead of queueing
    # forever. Counted in documents (one encoder request each); 0 = Triton's default (none).
    max_queue_size: int = 0  # documents waiting beyond this are refused (UNAVAILABLE)
    queue_timeout_us: int = 0  # a document queued longer than this is refused (UNAVAILABLE)
    extra: dict = field(default_factory=dict)

    def resolved(self) -> ServingOptions:
        """A copy with every ``None`` replaced by the profile's default."""
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES} (got {self.profile!r})")
        defaults = PROFILE_DEFAULTS[self.profile]
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        out = replace(self, **filled)
        out.preferred_batch_sizes = tuple(out.preferred_batch_sizes)
        if out.aggregator_kind not in (None, "cpu", "gpu"):
            raise ValueError(f"aggregator_kind must be cpu or gpu (got {out.aggregator_kind!r})")
        if out.tensorrt and out.profile != "gpu":
            raise ValueError("the TensorRT accelerator needs the gpu profile")
        for name in ("chunker_instances", "encoder_instances", "aggregator_instances"):
            if getattr(out, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(out, name)})")
        if out.ort_batch < 0:
            raise ValueError(f"ort_batch must be >= 0 (got {out.ort_batch})")
        if out.ort_batch and out.profile != "portable":
            raise ValueError("ort_batch applies to the portable encoder (Python backend) only")
        return out


# ---------------------------------------------------------------------------------------
# facts about the ONNX files, when they are there (configs are also written without them)
# ---------------------------------------------------------------------------------------


def onnx_facts(path: Path) -> dict | None:
    """Precision, parameter count and non-standard op domains of an ONNX file, or None."""
    if not Path(path).is_file():
        return None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dtypes = {init.data_type for init in model.graph.initializer}
    params = 0
    for init in model.graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        params += size
    if dtypes & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}:
        precision = "int8"
    elif onnx.TensorProto.FLOAT16 in dtypes:
        precision = "fp16"
    else:
        precision = "fp32"
    domains = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    return {"precision": precision, "params": params, "contrib_domains": sorted(domains)}


def aggregator_kind(opts: ServingOptions, facts: dict | None) -> str:
    """Where the aggregator runs: ``cpu`` unless the gpu profile serves a heavy head."""
    if opts.profile != "gpu":
        return "cpu"
    if opts.aggregator_kind:
        return opts.aggregator_kind
    heavy = facts is not None and facts["params"] >= AGGREGATOR_GPU_MIN_PARAMS
    return "gpu" if heavy else "cpu"


# ---------------------------------------------------------------------------------------
# pbtxt pieces
# ---------------------------------------------------------------------------------------


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


def _comment(text: str) -> str:
    """``#`` lines for a config: paragraphs (blank-line separated) reflowed to 90 columns."""
    lines = []
    for para in text.strip().split("\n\n"):
        lines += textwrap.wrap(" ".join(para.split()), width=88)
    return "".join(f"# {line}\n" for line in lines)


def chunker_config(opts: ServingOptions) -> str:
    opts = opts.resolved()
    text = (
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
    )
    if opts.profile == "gpu":
        n = opts.chunker_instances
        per_instance = 1000 / TOKENIZER_MS_PER_CHUNK
        short_docs = n * 1000 / CHUNKER_MS_PER_SHORT_DOCUMENT
        text += _comment(
            f"""
Chunker instances keep the GPU fed. Tokenizing and windowing one 512-token window costs
~{TOKENIZER_MS_PER_CHUNK} ms of one CPU core (measured, see gpu_checks/), so one instance
(one process, one request at a time) delivers ~{per_instance:,.0f} windows/s and {n}
deliver ~{n * per_instance:,.0f}/s, {n * per_instance / GPU_CEILING_CHUNKS_PER_S:.1f}x the
~{GPU_CEILING_CHUNKS_PER_S:,} chunks/s ceiling of one H100/H200 running bert-large at 512
tokens.

Rule: instances = ceil(3 x GPU rate / per-instance rate). The headroom pays for short
documents and bursts: a 1-window document costs ~{CHUNKER_MS_PER_SHORT_DOCUMENT} ms in the
chunker (~0.4 ms tokenizing + ~0.3 ms Python-backend overhead, measured on Triton 2.51), so
{n} instances handle ~{short_docs:,.0f} such documents/s.

The count is per server, not per GPU: multiply by the GPUs one server sees."""
        )
    text += f"instance_group [ {{ kind: KIND_CPU, count: {opts.chunker_instances} }} ]\n"
    return text


def encoder_config(
    opts: ServingOptions, vector_size: int, chunking: ChunkingConfig, facts: dict | None = None
) -> str:
    opts = opts.resolved()
    if opts.max_batch_size < chunking.max_chunks:
        raise ValueError(
            f"encoder max_batch_size {opts.max_batch_size} < max_chunks {chunking.max_chunks}: "
            "a long document would fail inside Triton"
        )
    preferred = [b for b in opts.preferred_batch_sizes if b <= opts.max_batch_size]
    head = 'name: "encoder"\n'
    if opts.profile == "portable":
        head += 'backend: "python"\n' + _params(
            {
                "onnx_file": "model.onnx",
                "ort_threads": str(opts.ort_threads),
                "ort_batch": str(opts.ort_batch),
            }
        )
    else:
        head += 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
    gpu = opts.profile == "gpu"
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    text = head
    if gpu:
        text += _gpu_encoder_comment(opts, facts, chunking.max_chunks)
    text += (
        f"max_batch_size: {opts.max_batch_size}\n"
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
        + queue_policy_block(opts)
        + "}\n"
        + f"instance_group [ {{ kind: {kind}, count: {opts.encoder_instances} }} ]\n"
    )
    if opts.profile != "portable" and opts.ort_threads:
        text += _params({"intra_op_thread_count": str(opts.ort_threads)})
    if gpu and opts.tensorrt:
        text += tensorrt_block(opts, chunking)
    if opts.warmup and opts.profile != "portable":
        # GPU: the largest batch at every length, so the memory arena reaches its peak and
        # kernels are chosen before the first user; CPU: one window per length is enough.
        sizes = (1, opts.max_batch_size) if gpu else (1,)
        text += warmup_block(chunking, sizes)
    return text


def _gpu_encoder_comment(opts: ServingOptions, facts: dict | None, max_chunks: int) -> str:
    mb = opts.max_batch_size
    relation = "=" if mb == max_chunks else ">="
    batch_tflop = mb * BERT_LARGE_GFLOP_PER_CHUNK / 1000
    at_peak_ms = batch_tflop / GPU_FP16_TFLOPS * 1000
    at_trt_ms = at_peak_ms / 0.65
    instances_note = "." if opts.encoder_instances >= 2 else " (the default is 2)."
    delay_chunks = opts.queue_delay_us / 1e6 * GPU_CEILING_CHUNKS_PER_S * 0.65
    if facts is None:
        precision = "unknown (no model.onnx yet)"
    elif opts.tensorrt:
        precision = f"{facts['precision']} plain graph; TensorRT builds FP16 engines"
    else:
        precision = f"{facts['precision']} (FP32 inputs/outputs)"
    return _comment(
        f"""
GPU encoder, sized for bert-large at 512 tokens on one H100/H200. Weights: {precision}.

One 512-token chunk of bert-large is ~{BERT_LARGE_GFLOP_PER_CHUNK} GFLOP; at
~{GPU_FP16_TFLOPS} TFLOP/s dense FP16 that is a ceiling of ~{GPU_CEILING_CHUNKS_PER_S:,}
chunks/s per GPU.

max_batch_size {mb} {relation} max_chunks ({max_chunks}): the longest admitted document
fits one batch (Triton rejects a request larger than max_batch_size). A full batch is {mb} x
{BERT_LARGE_GFLOP_PER_CHUNK} GFLOP = {batch_tflop:.1f} TFLOP: ~{at_peak_ms:.0f} ms at peak,
~{at_trt_ms:.0f} ms at the ~65% of peak TensorRT reaches on BERT-large. Batches of 32-64
chunks of 512 tokens keep the tensor cores busy; larger ones add latency for a few percent
of throughput.

preferred_batch_size: Triton matches these sizes exactly and never splits a document, so
a batch goes when (a) the next document would overflow max_batch_size, (b) exactly one of
these sizes is queued, or (c) the oldest request has waited max_queue_delay_microseconds.

max_queue_delay_microseconds {opts.queue_delay_us}: it only matters while an instance is
idle (under load, batches fill from the backlog). {opts.queue_delay_us / 1000:g} ms is the
GPU time of ~{delay_chunks:.0f} chunks at ~1,500 chunks/s, so a lone short document waits
little.

instance_group count {opts.encoder_instances} per GPU{instances_note} Two instances overlap
one batch's compute with the next one's copies and kernel launches; each holds its own
weights (bert-large FP16 ~0.7 GB)."""
    )


def tensorrt_block(opts: ServingOptions, chunking: ChunkingConfig) -> str:
    """TensorRT accelerator over the plain FP32 graph, FP16 engines, cached on disk.

    One optimization profile covering batch 1..max_batch_size and every sequence length
    the chunker emits (smallest bucket .. max_length). Several profiles (one per bucket)
    would tune each length, but onnxruntime's TensorRT EP keeps its execution context on
    profile 0 (microsoft/onnxruntime PR #31624 adds switching), so inputs that fit only a
    later profile fail: one profile is the setting that works.
    Parameter names: triton-inference-server/onnxruntime_backend README (TensorRT
    parameter mapping); the backend rejects unknown keys at load time.
    """
    opts = opts.resolved()
    lo = min(chunking.seq_buckets)
    hi = chunking.max_length
    mb = opts.max_batch_size
    fitting = [b for b in preferred_or(opts) if b <= mb]
    opt_batch = max(fitting) if fitting else mb

    def shapes(batch: int, seq: int) -> str:
        return f"input_ids:{batch}x{seq},attention_mask:{batch}x{seq}"

    params = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(opts.trt_workspace_bytes),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": opts.trt_cache_path,
        "trt_profile_min_shapes": shapes(1, lo),
        "trt_profile_opt_shapes": shapes(opt_batch, hi),
        "trt_profile_max_shapes": shapes(mb, hi),
    }
    inner = "".join(
        f'        parameters {{ key: "{k}" value: "{v}" }}\n' for k, v in params.items()
    )
    note = _comment(
        f"""
TensorRT: FP16 engines built from the plain FP32 graph (TensorRT cannot run onnxruntime's
fused contrib ops) when the model loads, cached in {opts.trt_cache_path}: it must be
writable; keep it on a volume to skip the minutes-long rebuild on restart, and clear it
after changing the model, TensorRT version or GPU.

One shape profile: batch 1..{mb}, sequence {lo}..{hi} (the chunker pads to
{list(chunking.seq_buckets)}), tuned for {opt_batch} x {hi}. One profile per sequence
length would tune each, but onnxruntime's TensorRT EP keeps its execution context on
profile 0 (microsoft/onnxruntime PR #31624), so inputs outside it would fail."""
    )
    return (
        note + "optimization { execution_accelerators {\n"
        "  gpu_execution_accelerator : [ {\n"
        '        name : "tensorrt"\n' + inner + "  } ]\n"
        "} }\n"
    )


def preferred_or(opts: ServingOptions) -> tuple[int, ...]:
    sizes = opts.preferred_batch_sizes
    if sizes is None:
        sizes = PROFILE_DEFAULTS.get(opts.profile, PROFILE_DEFAULTS["portable"])[
            "preferred_batch_sizes"
        ]
    return tuple(sizes) or (opts.max_batch_size,)


def queue_policy_block(opts: ServingOptions) -> str:
    """The encoder's ``default_queue_policy`` (inside ``dynamic_batching``), or nothing.

    Over capacity a request is refused at once with UNAVAILABLE ("Exceeds maximum queue
    size", or "Request timeout expired" after ``queue_timeout_us`` in the queue) instead of
    waiting without bound; clients retry UNAVAILABLE with backoff. A client may ask for a
    shorter timeout per request (``allow_timeout_override``)."""
    if opts.max_queue_size < 0 or opts.queue_timeout_us < 0:
        raise ValueError("max_queue_size and queue_timeout_us must be >= 0 (0: no limit)")
    if not (opts.max_queue_size or opts.queue_timeout_us):
        return ""
    return (
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {opts.queue_timeout_us}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {opts.max_queue_size}\n"
        "  }\n"
    )


def warmup_block(chunking: ChunkingConfig, batch_sizes: tuple[int, ...] = (1,)) -> str:
    """Warm-up requests per sequence length (and batch size), so no user pays for lazy
    initialisation: kernel selection, memory arena growth, TensorRT engine checks.

    Zero inputs: id 0 is [PAD] in BERT vocabularies, so every id is in range (random ids
    could fall outside the embedding table and fail the load)."""
    blocks = []
    for seq in chunking.seq_buckets:
        inputs = "".join(
            f'  inputs {{ key: "{name}" value: {{ data_type: TYPE_INT64, dims: [ {seq} ], '
            "zero_data: true } }\n"
            for name in ("input_ids", "attention_mask")
        )
        for batch in sorted(set(batch_sizes)):
            blocks.append(
                f'model_warmup {{\n  name: "seq{seq}_batch{batch}"\n  batch_size: {batch}\n'
                f"{inputs}}}\n"
            )
    return "".join(blocks)


def aggregator_config(
    opts: ServingOptions, vector_size: int, num_labels: int, facts: dict | None = None
) -> str:
    opts = opts.resolved()
    head = 'name: "aggregator"\n'
    kind = aggregator_kind(opts, facts)
    group_kind = f"KIND_{kind.upper()}"
    if opts.profile == "portable":
        head += 'backend: "python"\n' + _params({"onnx_file": "model.onnx", "ort_threads": "1"})
    else:
        head += 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
        if opts.profile == "gpu" and kind == "cpu":
            # one thread per instance: the model is tiny, and the cores belong to the chunkers
            head += _params({"intra_op_thread_count": "1"})
    if opts.profile == "gpu":
        params = facts["params"] if facts else None
        size = f"{params:,} weights" if params is not None else "size unknown"
        head += _comment(
            f"""
Aggregator on {kind.upper()} ({size}). Mean/max of chunk logits or one linear layer costs
at most ~0.02 ms per document on one core: a GPU instance would only add a CUDA context
and copies (and the response cache stores only responses whose outputs are in CPU memory).
A transformer head over 1024-d chunk vectors (16.8M weights) costs 1.75 ms (1 chunk) to
12.9 ms (64 chunks) per document on one core, several cores at GPU document rates, so heads
with >= {AGGREGATOR_GPU_MIN_PARAMS:,} weights run on the GPU (override:
ServingOptions.aggregator_kind)."""
        )
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
        + f"instance_group [ {{ kind: {group_kind}, count: {opts.aggregator_instances} }} ]\n"
    )


def response_cache_block() -> str:
    return (
        _comment(
            """
Response cache on the ensemble only: a repeated document (same bytes) skips chunker,
encoder and aggregator. Composing models need no cache of their own (an encoder entry
would hold a document's chunk vectors: memory for nothing the ensemble entry does not
already save). Needs the server flag --cache-config local,size=BYTES (e.g. 268435456:
an entry is ~1-2 KB for a 64-chunk document); without it this setting does nothing."""
        )
        + "response_cache { enable: true }\n"
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
        + (response_cache_block() if opts.response_cache else "")
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


def _check_gpu_encoder(opts: ServingOptions, facts: dict | None) -> None:
    if opts.profile != "gpu" or facts is None:
        return
    if facts["precision"] == "int8":
        raise ValueError(
            "the gpu profile cannot serve the int8 encoder (dynamic quantization runs on "
            "onnxruntime's CPU kernels only): export with --precision fp16"
        )
    if opts.tensorrt and facts["contrib_domains"]:
        raise ValueError(
            f"TensorRT needs the plain graph, but the encoder has {facts['contrib_domains']} "
            "ops (onnxruntime's fused kernels): export with --tensorrt"
        )


def write_configs(
    repo: Path, opts: ServingOptions, vector_size: int, labels: list[str], chunking: ChunkingConfig
) -> None:
    """All four config.pbtxt files and the Python-backend sources the profile needs.

    Reads the encoder/aggregator ONNX files when they are already in place (precision,
    size): the gpu profile refuses an INT8 encoder, and a fused graph under TensorRT."""
    if opts.profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} (got {opts.profile!r})")
    opts = opts.resolved()
    repo = Path(repo)
    for name in ("chunker", "encoder", "aggregator", ENSEMBLE):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    encoder_facts = onnx_facts(repo / "encoder" / "1" / "model.onnx")
    aggregator_facts = onnx_facts(repo / "aggregator" / "1" / "model.onnx")
    _check_gpu_encoder(opts, encoder_facts)
    (repo / "chunker" / "config.pbtxt").write_text(chunker_config(opts))
    (repo / "encoder" / "config.pbtxt").write_text(
        encoder_config(opts, vector_size, chunking, encoder_facts)
    )
    (repo / "aggregator" / "config.pbtxt").write_text(
        aggregator_config(opts, vector_size, len(labels), aggregator_facts)
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
