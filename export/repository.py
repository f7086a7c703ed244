"""Writing the Triton model repository: configs per profile, model.py sources, side files.

One set of ONNX files, three ways to serve them (DESIGN.md):

* ``portable``: encoder and aggregator are Python-backend models that run onnxruntime over
  the ONNX files (any Triton, e.g. the one from PyPI); the embedded default and the tests;
* ``cpu``: Triton's onnxruntime backend on CPU (FP32 or INT8);
* ``gpu``: Triton's onnxruntime backend on GPU, FP16 with FP32 I/O, optional TensorRT.

Every config is a ``model_config_pb2.ModelConfig`` message built from the contract's names
(``longdoc.contract``) and the numbers of ``export.sizing.plan``, written with protobuf's
``text_format``: valid against Triton's schema by construction. Each file carries one
comment line pointing at docs/GPU.md, where the reasons for the numbers are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from google.protobuf import text_format
from longdoc.export.graph import onnx_facts
from longdoc.export.sizing import ServingOptions, Sizing, plan
from tritonclient.grpc import model_config_pb2 as mc

from longdoc.chunking import ChunkingConfig
from longdoc.contract import (
    AGGREGATOR,
    AGGREGATOR_INPUT,
    AGGREGATOR_OUTPUTS,
    ATTENTION_MASK,
    CHUNK_LOGITS,
    CHUNK_SPANS,
    CHUNK_VECTORS,
    CHUNK_WEIGHTS,
    CHUNKER,
    CHUNKER_INPUT,
    CHUNKER_OUTPUTS,
    CHUNKING_FILE,
    DECISIONS,
    DISPATCHER,
    DISPATCHER_INPUTS,
    DISPATCHER_OUTPUT,
    DTYPES,
    ENCODER,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    ENSEMBLE,
    ENSEMBLE_OUTPUTS,
    INPUT_IDS,
    LABELS_FILE,
    LOGITS,
    MODELS,
    NUM_CHUNKS,
    ONNX_FILE,
    PARAM_DECISION,
    PARAM_ENCODER_MODEL,
    PARAM_INFLIGHT_SLICES,
    PARAM_MAX_WINDOWS,
    PARAM_ONNX_FILE,
    PARAM_ORT_BATCH,
    PARAM_ORT_INTRA_OP_THREADS,
    PARAM_ORT_THREADS,
    PARAM_SEQ_LENGTHS,
    PARAM_SLICE_WINDOWS,
    PROBABILITIES,
    PROFILES,
    TEXT,
    TOKENIZER_FILE,
    TOTAL_CHUNKS,
)
from longdoc.decision import Decision, save_decision

__all__ = ["ServingOptions", "Sizing", "build_configs", "write_chunker_files", "write_configs"]

CONFIG_FILE = "config.pbtxt"
POINTER = "docs/GPU.md"  # where the reasons for the generated numbers are written down


def _source_repository() -> Path:
    """Where the committed Python-backend model.py files are: model_repository/ in a source
    checkout, else the copy a wheel install ships as package data (longdoc.model_sources)."""
    checkout = Path(__file__).resolve().parent.parent / "model_repository"
    if (checkout / CHUNKER / "1" / "model.py").is_file():
        return checkout
    from importlib.util import find_spec

    spec = find_spec("longdoc.model_sources")  # a namespace package: no __init__.py
    if spec is None or not spec.submodule_search_locations:
        return checkout  # neither: export says which model.py is missing
    return Path(list(spec.submodule_search_locations)[0])


SOURCE_REPOSITORY = _source_repository()


# ---------------------------------------------------------------------------------------
# message pieces
# ---------------------------------------------------------------------------------------


def _tensor(kind, name: str, dims, label_filename: str = ""):
    tensor = kind(name=name, data_type=mc.DataType.Value(DTYPES[name]), dims=list(dims))
    if label_filename:
        tensor.label_filename = label_filename
    return tensor


def _inputs(cfg: mc.ModelConfig, spec: list[tuple[str, list[int]]]) -> None:
    cfg.input.extend(_tensor(mc.ModelInput, name, dims) for name, dims in spec)


def _outputs(cfg: mc.ModelConfig, spec: list[tuple[str, list[int]]], labels: set = ()) -> None:
    cfg.output.extend(
        _tensor(mc.ModelOutput, name, dims, LABELS_FILE if name in labels else "")
        for name, dims in spec
    )


def _params(cfg: mc.ModelConfig, params: dict[str, object]) -> None:
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)


def _instances(cfg: mc.ModelConfig, kind: str, count: int) -> None:
    group_kind = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(kind=group_kind, count=count)


def _backend(cfg: mc.ModelConfig, sizing: Sizing, threads: int) -> None:
    """The encoder/aggregator backend: the portable Python model over the ONNX file, or
    Triton's onnxruntime backend."""
    if sizing.backend == "python":
        cfg.backend = "python"
        _params(cfg, {PARAM_ONNX_FILE: ONNX_FILE, PARAM_ORT_THREADS: threads})
    else:
        cfg.backend = "onnxruntime"
        cfg.default_model_filename = ONNX_FILE
        if threads:
            _params(cfg, {PARAM_ORT_INTRA_OP_THREADS: threads})


# ---------------------------------------------------------------------------------------
# the four configs
# ---------------------------------------------------------------------------------------

CHUNKER_OUTPUT_DIMS = {
    INPUT_IDS: [-1, -1],
    ATTENTION_MASK: [-1, -1],
    CHUNK_SPANS: [-1, 2],
    NUM_CHUNKS: [1],
    TOTAL_CHUNKS: [1],
}


def chunker_config(sizing: Sizing) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=CHUNKER, backend="python", max_batch_size=0)
    _inputs(cfg, [(CHUNKER_INPUT, [1])])
    _outputs(cfg, [(name, CHUNKER_OUTPUT_DIMS[name]) for name in CHUNKER_OUTPUTS])
    _instances(cfg, sizing.kinds[CHUNKER], sizing.instances[CHUNKER])
    return cfg


def _seq_lengths(chunking: ChunkingConfig) -> str:
    """The window lengths the chunker produces (PARAM_SEQ_LENGTHS)."""
    return ",".join(str(length) for length in chunking.seq_buckets)


def dispatcher_config(
    sizing: Sizing, vector_size: int, chunking: ChunkingConfig | None = None
) -> mc.ModelConfig:
    """A document's windows -> chunk vectors: the encoder reached through BLS in slices of
    <= its max_batch_size, so no document is too long for it (README "Long documents").
    It is reachable directly like the ensemble: it refuses what the chunker never sends
    (more than max_windows windows, other window lengths) before holding an instance."""
    cfg = mc.ModelConfig(name=DISPATCHER, backend="python", max_batch_size=0)
    _inputs(cfg, [(name, [-1, -1]) for name in DISPATCHER_INPUTS])
    _outputs(cfg, [(DISPATCHER_OUTPUT, [-1, vector_size])])
    params = {
        PARAM_ENCODER_MODEL: ENCODER,
        PARAM_SLICE_WINDOWS: sizing.slice_windows,
        PARAM_INFLIGHT_SLICES: sizing.inflight_slices,
    }
    if chunking is not None:
        params[PARAM_SEQ_LENGTHS] = _seq_lengths(chunking)
        params[PARAM_MAX_WINDOWS] = chunking.max_windows
    _params(cfg, params)
    _instances(cfg, sizing.kinds[DISPATCHER], sizing.instances[DISPATCHER])
    return cfg


def encoder_config(
    sizing: Sizing, opts: ServingOptions, vector_size: int, chunking: ChunkingConfig | None = None
) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=ENCODER, max_batch_size=sizing.max_batch_size)
    _backend(cfg, sizing, sizing.ort_threads[ENCODER])
    if sizing.backend == "python":
        _params(cfg, {PARAM_ORT_BATCH: sizing.ort_batch})
        if chunking is not None:  # the portable encoder refuses other window lengths
            _params(cfg, {PARAM_SEQ_LENGTHS: _seq_lengths(chunking)})
    _inputs(cfg, [(name, [-1]) for name in ENCODER_INPUTS])
    _outputs(cfg, [(ENCODER_OUTPUT, [vector_size])])
    batching = cfg.dynamic_batching
    batching.preferred_batch_size.extend(sizing.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = sizing.queue_delay_us
    if sizing.max_queue_size or sizing.queue_timeout_us:
        # Over capacity a document is refused at once with UNAVAILABLE instead of waiting
        # without bound (RELIABILITY.md); a client may ask for a shorter timeout per request.
        policy = batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = sizing.queue_timeout_us
        policy.allow_timeout_override = True
        policy.max_queue_size = sizing.max_queue_size
    _instances(cfg, sizing.kinds[ENCODER], sizing.instances[ENCODER])
    if sizing.trt_shapes:
        _tensorrt(cfg, sizing, opts)
    for seq, batch in sizing.warmup:
        # Zero inputs: id 0 is [PAD] in BERT vocabularies, so every id is in range.
        sample = cfg.model_warmup.add(name=f"seq{seq}_batch{batch}", batch_size=batch)
        for name in ENCODER_INPUTS:
            sample.inputs[name].data_type = mc.DataType.Value(DTYPES[name])
            sample.inputs[name].dims.append(seq)
            sample.inputs[name].zero_data = True
    return cfg


def _tensorrt(cfg: mc.ModelConfig, sizing: Sizing, opts: ServingOptions) -> None:
    """TensorRT FP16 engines from the plain FP32 graph, cached on disk, one shape profile
    (docs/GPU.md "TensorRT"). Keys: the onnxruntime backend's TensorRT parameter mapping;
    it rejects unknown keys at load time."""

    def shapes(batch: int, seq: int) -> str:
        return ",".join(f"{name}:{batch}x{seq}" for name in ENCODER_INPUTS)

    accelerator = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt"
    )
    accelerator.parameters.update(
        {
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(opts.trt_workspace_bytes),
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": opts.trt_cache_path,
            **{
                f"trt_profile_{k}_shapes": shapes(*sizing.trt_shapes[k])
                for k in ("min", "opt", "max")
            },
        }
    )


def aggregator_config(sizing: Sizing, vector_size: int, num_labels: int) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=AGGREGATOR, max_batch_size=0)
    _backend(cfg, sizing, sizing.ort_threads[AGGREGATOR])
    _inputs(cfg, [(AGGREGATOR_INPUT, [-1, vector_size])])
    dims = label_output_dims(num_labels)
    _outputs(cfg, [(name, dims[name]) for name in AGGREGATOR_OUTPUTS])
    _instances(cfg, sizing.kinds[AGGREGATOR], sizing.instances[AGGREGATOR])
    return cfg


def _internal(name: str) -> str:
    """The ensemble's name for a tensor passed between two steps."""
    return "_" + name


ENSEMBLE_OUTPUT_DIMS = {NUM_CHUNKS: [1], CHUNK_SPANS: [-1, 2], TOTAL_CHUNKS: [1]}


def label_output_dims(num_labels: int) -> dict:
    """The dims of the outputs with one value per label (the aggregator's, the ensemble's)."""
    return {
        LOGITS: [num_labels],
        PROBABILITIES: [num_labels],
        CHUNK_LOGITS: [-1, num_labels],
        CHUNK_WEIGHTS: [-1, num_labels],
        DECISIONS: [num_labels],
    }


def ensemble_config(
    sizing: Sizing, num_labels: int, decision: Decision | None = None
) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=0)
    _inputs(cfg, [(TEXT, [1])])
    decision = decision or Decision()
    decision.check_labels(num_labels)
    _params(cfg, {PARAM_DECISION: json.dumps(decision.to_dict(), sort_keys=True)})
    dims = {**ENSEMBLE_OUTPUT_DIMS, **label_output_dims(num_labels)}
    _outputs(cfg, [(name, dims[name]) for name in ENSEMBLE_OUTPUTS], {LOGITS, PROBABILITIES})
    if sizing.response_cache:
        cfg.response_cache.enable = True  # the ensemble only (docs/GPU.md "Response cache")
    outputs = set(ENSEMBLE_OUTPUTS)

    def name_of(tensor: str) -> str:  # ensemble outputs keep their names
        return tensor if tensor in outputs else _internal(tensor)

    steps = cfg.ensemble_scheduling.step
    chunker = steps.add(model_name=CHUNKER, model_version=-1)
    chunker.input_map[CHUNKER_INPUT] = TEXT
    for name in CHUNKER_OUTPUTS:
        chunker.output_map[name] = name_of(name)
    # the encoder is no step of its own: the dispatcher calls it (BLS), in slices
    dispatcher = steps.add(model_name=DISPATCHER, model_version=-1)
    for name in DISPATCHER_INPUTS:
        dispatcher.input_map[name] = name_of(name)
    dispatcher.output_map[DISPATCHER_OUTPUT] = _internal(CHUNK_VECTORS)
    aggregator = steps.add(model_name=AGGREGATOR, model_version=-1)
    aggregator.input_map[AGGREGATOR_INPUT] = _internal(CHUNK_VECTORS)
    for name in AGGREGATOR_OUTPUTS:
        aggregator.output_map[name] = name_of(name)
    return cfg


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def render(cfg: mc.ModelConfig, sizing: Sizing) -> str:
    """The config.pbtxt text: one pointer line, then the message in protobuf text format."""
    lines = [
        f"# Written by `longdoc export` (profile {sizing.profile}); why these numbers: {POINTER}"
    ]
    if cfg.response_cache.enable:
        lines.append(
            "# response_cache does nothing unless tritonserver runs with "
            "--cache-config local,size=BYTES (longdoc serve --response-cache-mb)."
        )
    body = text_format.MessageToString(cfg, use_short_repeated_primitives=True)
    return "\n".join(lines) + "\n" + body


def _check_gpu_encoder(sizing: Sizing, facts: dict | None) -> None:
    if sizing.profile != "gpu" or facts is None:
        return
    if facts["precision"] == "int8":
        raise ValueError(
            "the gpu profile cannot serve the int8 encoder (dynamic quantization runs on "
            "onnxruntime's CPU kernels only): export with --precision fp16"
        )
    if sizing.tensorrt and facts["contrib_domains"]:
        raise ValueError(
            f"TensorRT needs the plain graph, but the encoder has {facts['contrib_domains']} "
            "ops (onnxruntime's fused kernels): export with --tensorrt"
        )


def build_configs(
    opts: ServingOptions,
    vector_size: int,
    num_labels: int,
    chunking: ChunkingConfig,
    aggregator_facts: dict | None = None,
    decision: Decision | None = None,
) -> tuple[Sizing, dict[str, mc.ModelConfig]]:
    """The sizing and the five config messages, by model name; ``decision``: the rule baked
    into the aggregator (default single-label), named in the ensemble's parameters."""
    if opts.profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} (got {opts.profile!r})")
    opts = opts.resolved()
    sizing = plan(opts, chunking, aggregator_facts)
    return sizing, {
        CHUNKER: chunker_config(sizing),
        DISPATCHER: dispatcher_config(sizing, vector_size, chunking),
        ENCODER: encoder_config(sizing, opts, vector_size, chunking),
        AGGREGATOR: aggregator_config(sizing, vector_size, num_labels),
        ENSEMBLE: ensemble_config(sizing, num_labels, decision),
    }


def write_configs(
    repo: Path,
    opts: ServingOptions,
    vector_size: int,
    labels: list[str],
    chunking: ChunkingConfig,
    decision: Decision | None = None,
) -> Sizing:
    """All five config.pbtxt files and the Python-backend sources the profile needs; returns
    the sizing they were built from (the export report's ``serving``). ``labels.txt`` and
    ``decision.json`` (``decision``, default single-label: the rule baked into the
    aggregator graph) go to the ensemble folder, so the served thresholds are inspectable.

    Reads the encoder/aggregator ONNX files when they are already in place (precision,
    size): the gpu profile refuses an INT8 encoder, and a fused graph under TensorRT."""
    repo = Path(repo)
    for name in (*MODELS, ENSEMBLE):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    encoder_facts = onnx_facts(repo / ENCODER / "1" / ONNX_FILE)
    aggregator_facts = onnx_facts(repo / AGGREGATOR / "1" / ONNX_FILE)
    decision = decision or Decision()
    sizing, configs = build_configs(
        opts, vector_size, len(labels), chunking, aggregator_facts, decision
    )
    _check_gpu_encoder(sizing, encoder_facts)
    for name, cfg in configs.items():
        (repo / name / CONFIG_FILE).write_text(render(cfg, sizing))
    label_text = "\n".join(labels) + "\n"
    (repo / ENSEMBLE / LABELS_FILE).write_text(label_text)
    (repo / AGGREGATOR / LABELS_FILE).write_text(label_text)
    save_decision(repo / ENSEMBLE, decision)

    python_models = [name for name, cfg in configs.items() if cfg.backend == "python"]
    for name in MODELS:
        target = repo / name / "1" / "model.py"
        source = SOURCE_REPOSITORY / name / "1" / "model.py"
        if name in python_models:
            if target.resolve() != source.resolve():
                shutil.copy(source, target)
        elif target.exists() and target.resolve() != source.resolve():
            target.unlink()
    return sizing


def write_chunker_files(repo: Path, tokenizer_path: Path, chunking: ChunkingConfig) -> None:
    """The chunker reads its tokenizer and parameters from its own model directory."""
    target = repo / CHUNKER / "1"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer_path, target / TOKENIZER_FILE)
    chunking.save(target / CHUNKING_FILE)
