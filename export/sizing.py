"""The numbers in the generated configs: batch sizes, instance counts, buckets, shapes.

``ServingOptions`` is what was asked for (CLI flags; ``None`` takes the profile's default),
``plan()`` turns it and the chunking into a ``Sizing``: every number the configs carry,
computed in one place. ``export.repository`` writes the configs from a ``Sizing`` and the
export report records ``Sizing.to_dict()`` as its ``serving`` section, so a benchmark reads
the served facts without parsing config.pbtxt. Why each default is what it is: docs/GPU.md
(gpu profile) and BENCHMARKS.md (the CPU measurements behind portable/cpu).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from longdoc.chunking import ChunkingConfig
from longdoc.contract import AGGREGATOR, CHUNKER, DISPATCHER, ENCODER, PROFILE_BACKENDS, PROFILES
from longdoc.presets import CHUNKER_HEADROOM, GPU_CEILING_CHUNKS_PER_S

# --- measured or assumed rates (docs/GPU.md "The arithmetic", "Chunker instances") ----
# The GPU ceiling (DESIGN.md: bert-large, 512 tokens, ~335 GFLOP per chunk at ~790 TFLOP/s
# -> ~2,350 chunks/s) and the chunker headroom come from longdoc.presets, which gpu_checks
# reads too.
# 2-core AMD EPYC dev machine (gpu_checks/results/): tokenizer + windowing ~0.5 ms of one
# core per 512-token window.
TOKENIZER_MS_PER_CHUNK = 0.5
# Heads with at least this many weights run their aggregator on the GPU (gpu profile):
# a transformer head over 1024-d vectors (16.8M) costs 1.75-12.9 ms per document on a core.
AGGREGATOR_GPU_MIN_PARAMS = 4_000_000
TRT_CACHE_PATH = "/tmp/longdoc_trt_cache"
# The encoder's max_batch_size when none is asked for. Documents of any length fit: the
# dispatcher sends a document's windows in slices of at most this many (README "Long
# documents").
DEFAULT_MAX_BATCH_SIZE = 64


def chunker_instances_for(
    chunks_per_s: float,
    ms_per_chunk: float = TOKENIZER_MS_PER_CHUNK,
    headroom: float = CHUNKER_HEADROOM,
) -> int:
    """Chunker instances that tokenize ``headroom`` x the encoder's rate (one request at a
    time per instance, ``1000 / ms_per_chunk`` windows/s each)."""
    return max(1, math.ceil(headroom * chunks_per_s * ms_per_chunk / 1000))


# How the dispatcher feeds the encoder (README "Long documents", BENCHMARKS.md "Mixed
# workload"). A short document waits behind at most slice_windows x inflight_slices windows
# of a long one (the encoder queue is FIFO; a BLS request has no priority in Triton 2.51).
# CPU: a MiniLM window costs 120-400 ms on 2 cores and one onnxruntime call per window is
# the fastest anyway, so one-window slices cost ~1% in throughput (a BLS round trip and the
# batching delay per window) and a short document waits behind one window of a long one.
# GPU: 2 x 8 windows, one slice per encoder instance: 8 x 512 tokens is a 4,096-row GEMM,
# near the tensor cores' peak, and a short document waits behind ~5 ms of bert-large (8 x
# 335 GFLOP at ~500 TFLOP/s) instead of ~40 ms behind a batch of 32-64; several long
# documents in flight still fill batches of 32-64 between them.
# dispatcher_instances: documents in flight at once (each holds an instance until read).
CPU_DISPATCH = dict(dispatcher_instances=4, slice_windows=1, inflight_slices=1)
GPU_DISPATCH = dict(dispatcher_instances=8, slice_windows=8, inflight_slices=2)

# Defaults per profile for the ServingOptions fields left at None. portable/cpu: measured
# on 2-core CPU machines (BENCHMARKS.md); gpu: bert-large at 512 tokens on one H100/H200.
PROFILE_DEFAULTS: dict[str, dict] = {
    "portable": dict(
        preferred_batch_sizes=(8, 16, 32),
        queue_delay_us=2000,
        chunker_instances=2,
        encoder_instances=1,
        aggregator_instances=1,
        ort_batch=1,
        **CPU_DISPATCH,
    ),
    "cpu": dict(
        preferred_batch_sizes=(8, 16, 32),
        queue_delay_us=2000,
        chunker_instances=2,
        encoder_instances=1,
        aggregator_instances=1,
        ort_batch=0,
        **CPU_DISPATCH,
    ),
    "gpu": dict(
        preferred_batch_sizes=(32, 64),
        queue_delay_us=2000,
        chunker_instances=chunker_instances_for(GPU_CEILING_CHUNKS_PER_S),  # 4
        encoder_instances=2,
        aggregator_instances=1,
        ort_batch=0,
        **GPU_DISPATCH,
    ),
}


@dataclass
class ServingOptions:
    """What the configs need beyond the model files; ``None`` takes the profile default."""

    profile: str = "portable"
    # encoder windows per Triton batch (None: DEFAULT_MAX_BATCH_SIZE); no relation to the
    # document length: the dispatcher slices a document's windows to fit
    max_batch_size: int | None = None
    dispatcher_instances: int | None = None
    slice_windows: int | None = None  # windows per encoder request (capped at max_batch_size)
    inflight_slices: int | None = None  # encoder requests outstanding per document
    preferred_batch_sizes: tuple[int, ...] | None = None
    queue_delay_us: int | None = None
    chunker_instances: int | None = None
    encoder_instances: int | None = None  # per GPU for KIND_GPU
    ort_threads: int = 0  # 0: onnxruntime's default (all cores)
    # portable encoder: windows per onnxruntime call inside a Triton batch (0: the whole
    # batch in one call); one per call measured fastest on CPU (BENCHMARKS.md).
    ort_batch: int | None = None
    tensorrt: bool = False
    response_cache: bool = False
    warmup: bool = True
    aggregator_kind: str | None = None  # "cpu" | "gpu"; None: by its size (gpu profile)
    aggregator_instances: int | None = None
    trt_cache_path: str = TRT_CACHE_PATH  # must be writable by the server (not /models)
    trt_workspace_bytes: int = 4 << 30
    # Encoder queue policy (RELIABILITY.md): over capacity, refuse fast (UNAVAILABLE)
    # instead of queueing forever. Counted in encoder requests: at most inflight_slices per
    # document being read (the dispatcher's pacing); 0 = no limit (Triton's default).
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    extra: dict = field(default_factory=dict)

    def resolved(self) -> ServingOptions:
        """A copy with every profile default filled in, checked."""
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
        for name in (
            "chunker_instances",
            "encoder_instances",
            "aggregator_instances",
            "dispatcher_instances",
            "slice_windows",
            "inflight_slices",
        ):
            if getattr(out, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(out, name)})")
        if out.ort_batch < 0:
            raise ValueError(f"ort_batch must be >= 0 (got {out.ort_batch})")
        if out.ort_batch and out.profile != "portable":
            raise ValueError("ort_batch applies to the portable encoder (Python backend) only")
        if out.max_queue_size < 0 or out.queue_timeout_us < 0:
            raise ValueError("max_queue_size and queue_timeout_us must be >= 0 (0: no limit)")
        if out.max_batch_size is not None and out.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (got {out.max_batch_size})")
        return out


@dataclass(frozen=True)
class Sizing:
    """Every number the generated configs carry (the export report's ``serving``)."""

    profile: str
    backend: str  # of encoder and aggregator: "python" (portable) or "onnxruntime"
    max_chunks: int  # opt-in cap on the windows read per document (0: all of them)
    seq_buckets: tuple[int, ...]  # lengths the chunker pads windows to
    max_batch_size: int  # encoder windows per Triton batch
    preferred_batch_sizes: tuple[int, ...]  # those <= max_batch_size
    queue_delay_us: int
    max_queue_size: int  # encoder queue: documents beyond it refused (0: no limit)
    queue_timeout_us: int  # encoder queue: refused after this long queued (0: no limit)
    instances: dict[str, int]  # per model instance counts (per GPU: KIND_GPU)
    kinds: dict[str, str]  # per model: "cpu" | "gpu"
    ort_threads: dict[str, int]  # encoder/aggregator onnxruntime intra-op threads (0: all)
    ort_batch: int  # portable encoder: windows per onnxruntime call (0: the whole batch)
    tensorrt: bool
    trt_shapes: dict[str, list[int]] | None  # "min"/"opt"/"max" -> [batch, seq]
    warmup: list[list[int]]  # encoder warm-up requests, [seq, batch] each
    response_cache: bool  # on the ensemble
    slice_windows: int = DEFAULT_MAX_BATCH_SIZE  # dispatcher: windows per encoder request
    inflight_slices: int = 1  # dispatcher: encoder requests outstanding per document

    def to_dict(self) -> dict:
        data = asdict(self)
        data["seq_buckets"] = list(self.seq_buckets)
        data["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return data


def aggregator_kind(opts: ServingOptions, facts: dict | None) -> str:
    """Where the aggregator runs: ``cpu`` unless the gpu profile serves a heavy head."""
    if opts.profile != "gpu":
        return "cpu"
    if opts.aggregator_kind:
        return opts.aggregator_kind
    heavy = facts is not None and facts["params"] >= AGGREGATOR_GPU_MIN_PARAMS
    return "gpu" if heavy else "cpu"


def encoder_max_batch_size(opts: ServingOptions) -> int:
    """The encoder's ``max_batch_size``: asked for, or 64. Any document length fits it: the
    dispatcher never sends more than ``min(slice_windows, max_batch_size)`` windows in one
    request (Triton refuses a larger one: "batch-size must be <= M")."""
    return DEFAULT_MAX_BATCH_SIZE if opts.max_batch_size is None else opts.max_batch_size


def plan(
    opts: ServingOptions, chunking: ChunkingConfig, aggregator_facts: dict | None = None
) -> Sizing:
    """The numbers for ``opts`` and ``chunking`` (``aggregator_facts``: the aggregator's ONNX
    facts, which decide where a gpu profile's aggregator runs)."""
    opts = opts.resolved()
    mb = encoder_max_batch_size(opts)
    preferred = tuple(b for b in opts.preferred_batch_sizes if b <= mb)
    gpu = opts.profile == "gpu"
    agg_kind = aggregator_kind(opts, aggregator_facts)
    if opts.profile == "portable":
        agg_threads = 1  # one document per request
    elif gpu and agg_kind == "cpu":
        agg_threads = 1  # the model is tiny, the cores belong to the chunkers
    else:
        agg_threads = 0
    trt_shapes = None
    if gpu and opts.tensorrt:
        # One shape profile: batch 1..max, every bucket (docs/GPU.md "TensorRT").
        lo, hi = min(chunking.seq_buckets), chunking.max_length
        opt_batch = max(preferred) if preferred else mb
        trt_shapes = {"min": [1, lo], "opt": [opt_batch, hi], "max": [mb, hi]}
    warmup: list[list[int]] = []
    if opts.warmup and opts.profile != "portable":
        # GPU: the largest batch at every length (arena at its peak, kernels chosen);
        # CPU: one window per length.
        batches = sorted({1, mb}) if gpu else [1]
        warmup = [[seq, batch] for seq in chunking.seq_buckets for batch in batches]
    return Sizing(
        profile=opts.profile,
        backend=PROFILE_BACKENDS[opts.profile],
        max_chunks=chunking.max_chunks,
        seq_buckets=tuple(chunking.seq_buckets),
        max_batch_size=mb,
        preferred_batch_sizes=preferred,
        queue_delay_us=opts.queue_delay_us,
        max_queue_size=opts.max_queue_size,
        queue_timeout_us=opts.queue_timeout_us,
        instances={
            CHUNKER: opts.chunker_instances,
            DISPATCHER: opts.dispatcher_instances,
            ENCODER: opts.encoder_instances,
            AGGREGATOR: opts.aggregator_instances,
        },
        kinds={
            CHUNKER: "cpu",
            DISPATCHER: "cpu",
            ENCODER: "gpu" if gpu else "cpu",
            AGGREGATOR: agg_kind,
        },
        ort_threads={ENCODER: opts.ort_threads, AGGREGATOR: agg_threads},
        ort_batch=opts.ort_batch,
        tensorrt=opts.tensorrt,
        trt_shapes=trt_shapes,
        warmup=warmup,
        response_cache=opts.response_cache,
        slice_windows=min(opts.slice_windows, mb),
        inflight_slices=opts.inflight_slices,
    )
