"""Serving profiles (portable, cpu, gpu, gpu + TensorRT): configs against Triton's schema and
against the ONNX files they serve, on the CPU.

No GPU and no onnxruntime backend here: every config.pbtxt is parsed with Triton's own
protobuf schema, and every claim it makes about a model file (names, dtypes, shapes,
batch dimension, precision, graph ops) is checked against that file with onnx and
onnxruntime. What needs a GPU is in gpu_checks/run_gpu_checks.py, smoke-tested at the end.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from longdoc.export import repository, sizing
from longdoc.export.pipeline import ExportSpec, run
from longdoc.export.sizing import ServingOptions
from tritonclient.grpc import model_config_pb2 as mc

from longdoc import corpus
from longdoc.chunking import ChunkingConfig, chunk_text, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("chunker", "dispatcher", "encoder", "aggregator", repository.ENSEMBLE)
NUM_LABELS = 3
# profile id -> (profile, precision, tensorrt, response_cache, parity)
VARIANTS = {
    "portable": ("portable", "fp32", False, False, False),
    "cpu": ("cpu", "int8", False, False, False),
    "gpu": ("gpu", "fp16", False, False, True),  # FP16 parity vs PyTorch, on the CPU EP
    "gpu-tensorrt": ("gpu", "fp16", True, True, True),  # parity of the plain FP32 graph
}
CONFIG_TO_ONNX = {
    "TYPE_INT64": onnx.TensorProto.INT64,
    "TYPE_FP32": onnx.TensorProto.FLOAT,
    "TYPE_BOOL": onnx.TensorProto.BOOL,
}
CONFIG_TO_ORT = {
    "TYPE_INT64": "tensor(int64)",
    "TYPE_FP32": "tensor(float)",
    "TYPE_BOOL": "tensor(bool)",
}
# Keys the onnxruntime backend accepts for its TensorRT accelerator (src/onnxruntime.cc of
# triton-inference-server/onnxruntime_backend; anything else fails the model load).
TRT_KEYS = {
    "precision_mode",
    "max_workspace_size_bytes",
    "trt_max_partition_iterations",
    "trt_min_subgraph_size",
    "int8_calibration_table_name",
    "int8_use_native_calibration_table",
    "trt_dla_enable",
    "trt_dla_core",
    "trt_engine_cache_enable",
    "trt_engine_cache_path",
    "trt_engine_cache_prefix",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable",
    "trt_timing_cache_path",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_build_heuristics_enable",
    "trt_sparsity_enable",
    "trt_builder_optimization_level",
    "trt_auxiliary_streams",
    "trt_tactic_sources",
    "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes",
    "trt_profile_max_shapes",
    "trt_profile_opt_shapes",
    "trt_cuda_graph_enable",
    "trt_dump_ep_context_model",
    "trt_ep_context_file_path",
    "trt_ep_context_embed_mode",
}
ORT_FUSED_OPS = {
    "Attention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "LayerNormalization_fused",
    "MultiHeadAttention",
}


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """One tiny export per profile variant (~3 s each)."""
    out = {}
    for key, (profile, precision, trt, cache, parity) in VARIANTS.items():
        path = tmp_path_factory.mktemp(key)
        spec = ExportSpec(
            output=path,
            preset="tiny",
            precision=precision,
            profile=profile,
            num_labels=NUM_LABELS,
            skip_parity=not parity,
            serving=ServingOptions(profile=profile, tensorrt=trt, response_cache=cache),
        )
        out[key] = (path, run(spec, log=lambda *_: None))
    return out


def configs(repo: Path) -> dict[str, mc.ModelConfig]:
    return {
        name: text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
        for name in MODELS
    }


def dtype_name(value: int) -> str:
    return mc.DataType.Name(value)


def onnx_file(repo: Path, cfg: mc.ModelConfig) -> Path:
    if cfg.backend == "onnxruntime":
        return repo / cfg.name / "1" / (cfg.default_model_filename or "model.onnx")
    assert cfg.backend == "python"
    return repo / cfg.name / "1" / cfg.parameters["onnx_file"].string_value


def onnx_shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def full_dims(cfg: mc.ModelConfig, tensor) -> list[int]:
    """A tensor's shape as the model sees it: the batch dimension first when batching."""
    return ([-1] if cfg.max_batch_size > 0 else []) + list(tensor.dims)


def compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------
# schema and agreement with the ONNX files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_config_parses_with_tritons_schema(repos, variant):
    repo, _ = repos[variant]
    parsed = configs(repo)
    for name, cfg in parsed.items():
        assert cfg.name == name
        assert (repo / name / "1").is_dir()
    profile = VARIANTS[variant][0]
    encoder, aggregator = parsed["encoder"], parsed["aggregator"]
    expected = "python" if profile == "portable" else "onnxruntime"
    assert encoder.backend == aggregator.backend == expected
    assert parsed["chunker"].backend == "python"
    assert parsed[repository.ENSEMBLE].platform == "ensemble"
    kind = mc.ModelInstanceGroup.KIND_GPU if profile == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    assert [g.kind for g in encoder.instance_group] == [kind]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", ["encoder", "aggregator"])
def test_config_agrees_with_the_onnx_file_it_names(repos, variant, model):
    repo, report = repos[variant]
    cfg = configs(repo)[model]
    path = onnx_file(repo, cfg)
    graph = onnx.load(str(path), load_external_data=False).graph
    values = {v.name: v for v in list(graph.input) + list(graph.output)}
    # the config declares exactly the graph's inputs and outputs
    assert {t.name for t in cfg.input} == {v.name for v in graph.input}
    assert {t.name for t in cfg.output} == {v.name for v in graph.output}
    for tensor in list(cfg.input) + list(cfg.output):
        value = values[tensor.name]
        assert value.type.tensor_type.elem_type == CONFIG_TO_ONNX[dtype_name(tensor.data_type)]
        shape = onnx_shape(value)
        dims = full_dims(cfg, tensor)
        assert len(shape) == len(dims), (tensor.name, shape, dims)
        if cfg.max_batch_size > 0:  # the batch dimension is the graph's first, and dynamic
            assert isinstance(shape[0], str), (tensor.name, shape)
        for got, want in zip(shape, dims):
            if want != -1:
                assert got == want, (tensor.name, shape, dims)
    # the vector size the config promises is what the encoder emits
    vector = values["chunk_vectors"]
    if model == "encoder":
        assert onnx_shape(vector)[-1] == cfg.output[0].dims[-1] == NUM_LABELS
        assert cfg.max_batch_size >= report["chunking"]["max_chunks"]
    # and onnxruntime agrees, and runs it at the shapes the config admits
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_types = {a.name: a.type for a in session.get_inputs() + session.get_outputs()}
    for tensor in list(cfg.input) + list(cfg.output):
        assert ort_types[tensor.name] == CONFIG_TO_ORT[dtype_name(tensor.data_type)]
    if model == "encoder":
        ids = np.full((cfg.max_batch_size, 128), 1000, dtype=np.int64)
        (out,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert out.shape == (cfg.max_batch_size, NUM_LABELS) and out.dtype == np.float32
    else:
        outs = session.run(None, {"chunk_vectors": np.zeros((5, NUM_LABELS), np.float32)})
        shapes = dict(zip([o.name for o in session.get_outputs()], [o.shape for o in outs]))
        assert shapes == {
            "LOGITS": (3,),
            "PROBABILITIES": (3,),
            "CHUNK_LOGITS": (5, 3),
            "CHUNK_WEIGHTS": (5, 3),
            "DECISIONS": (3,),
        }


@pytest.mark.parametrize("variant", VARIANTS)
def test_ensemble_steps_connect_existing_tensors_with_matching_types(repos, variant):
    repo, _ = repos[variant]
    parsed = configs(repo)
    ensemble = parsed[repository.ENSEMBLE]
    # tensor name in the ensemble -> (dtype, full dims) of whoever produces it
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    produced_by_steps = set()
    for step in ensemble.ensemble_scheduling.step:
        model = parsed[step.model_name]
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        assert set(step.input_map) == set(inputs), step.model_name  # every input fed
        for model_input, source in step.input_map.items():
            assert source in available, f"{step.model_name}.{model_input} <- {source}: missing"
            dtype, dims = available[source]
            assert dtype == inputs[model_input].data_type, (step.model_name, model_input)
            assert compatible(dims, full_dims(model, inputs[model_input])), (
                step.model_name,
                model_input,
                dims,
                full_dims(model, inputs[model_input]),
            )
        for model_output, target in step.output_map.items():
            assert model_output in outputs, f"{step.model_name} has no output {model_output}"
            assert target not in available, f"{target} produced twice"
            tensor = outputs[model_output]
            available[target] = (tensor.data_type, full_dims(model, tensor))
            produced_by_steps.add(target)
    for out in ensemble.output:
        assert out.name in produced_by_steps, out.name
        dtype, dims = available[out.name]
        assert dtype == out.data_type and compatible(dims, list(out.dims)), out.name
    consumed = {src for s in ensemble.ensemble_scheduling.step for src in s.input_map.values()}
    internal = produced_by_steps - {o.name for o in ensemble.output}
    assert internal <= consumed, f"produced but never used: {internal - consumed}"


# ---------------------------------------------------------------------------------------
# gpu profile
# ---------------------------------------------------------------------------------------


def test_gpu_encoder_is_fp16_with_fp32_io_and_runs_on_the_cpu_provider(repos):
    repo, report = repos["gpu"]
    model = onnx.load(str(repo / "encoder" / "1" / "model.onnx"))
    dtypes = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    weights = [i for i in model.graph.initializer if len(i.dims) == 2]
    assert all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    io = {
        v.name: v.type.tensor_type.elem_type
        for v in list(model.graph.input) + list(model.graph.output)
    }
    assert io == {
        "input_ids": onnx.TensorProto.INT64,
        "attention_mask": onnx.TensorProto.INT64,
        "chunk_vectors": onnx.TensorProto.FLOAT,
    }
    # the export's parity report (PyTorch FP32 vs this FP16 graph on the CPU provider)
    assert report["parity"]["passed"] and report["parity"]["precision"] == "fp16"
    # and against the FP32 graph of the same weights, on real text, bucket by bucket
    plain = ort.InferenceSession(
        str(repos["gpu-tensorrt"][0] / "encoder" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    fp16 = ort.InferenceSession(
        str(repo / "encoder" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    cfg = ChunkingConfig.load(repo / "chunker" / "1" / "chunking.json")
    tok = load_tokenizer(repo / "chunker" / "1" / "tokenizer.json")
    for text in corpus.documents([40, 120, 2_000], seed=2):
        chunks = chunk_text(text, tok, cfg)
        feeds = {"input_ids": chunks.input_ids, "attention_mask": chunks.attention_mask}
        a, b = plain.run(None, feeds)[0], fp16.run(None, feeds)[0]
        assert b.dtype == np.float32 and np.abs(a - b).max() < 5e-3


def test_gpu_defaults_are_the_sized_ones(repos):
    parsed = configs(repos["gpu"][0])
    encoder, chunker, aggregator = parsed["encoder"], parsed["chunker"], parsed["aggregator"]
    defaults = sizing.PROFILE_DEFAULTS["gpu"]
    assert encoder.max_batch_size == 64
    assert list(encoder.dynamic_batching.preferred_batch_size) == [32, 64]
    assert encoder.dynamic_batching.max_queue_delay_microseconds == defaults["queue_delay_us"]
    assert encoder.instance_group[0].count == defaults["encoder_instances"] == 2
    assert chunker.instance_group[0].count == defaults["chunker_instances"] == 4
    assert chunker.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    # tiny logits head: a mean over chunks, so the aggregator stays on the CPU, one thread
    assert aggregator.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert aggregator.parameters["intra_op_thread_count"].string_value == "1"
    # 4 chunkers x (1000 / 0.5 ms) windows/s keep the GPU ceiling fed with 3x headroom
    rate = 1000 / sizing.TOKENIZER_MS_PER_CHUNK
    assert defaults["chunker_instances"] * rate >= 3 * sizing.GPU_CEILING_CHUNKS_PER_S
    assert defaults["chunker_instances"] == sizing.chunker_instances_for(2350) == 4
    # the reasons live in docs/GPU.md, with the same numbers; each config points there
    guide = (ROOT / "docs" / "GPU.md").read_text()
    assert "2,350 chunks/s" in guide and "335 GFLOP" in guide and "0.49 ms" in guide
    for model in MODELS:
        first = (repos["gpu"][0] / model / "config.pbtxt").read_text().splitlines()[0]
        assert first.startswith("# ") and "docs/GPU.md" in first, (model, first)


def aggregator_of(opts: ServingOptions, facts: dict | None) -> mc.ModelConfig:
    _, built = repository.build_configs(opts, 1024, 2, ChunkingConfig(), facts)
    return built["aggregator"]


def test_gpu_aggregator_moves_to_the_gpu_for_heavy_heads():
    opts = ServingOptions(profile="gpu")
    heavy = {"params": 16_800_000, "precision": "fp32", "contrib_domains": []}
    light = {"params": 2_000, "precision": "fp32", "contrib_domains": []}
    for facts, kind in ((heavy, "KIND_GPU"), (light, "KIND_CPU"), (None, "KIND_CPU")):
        cfg = aggregator_of(opts, facts)
        assert mc.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == kind
        # a GPU aggregator gets onnxruntime's threads; a CPU one a single thread
        threads = cfg.parameters.get("intra_op_thread_count")
        assert (threads.string_value if threads else None) == (None if facts is heavy else "1")
    forced = ServingOptions(profile="gpu", aggregator_kind="cpu")
    assert aggregator_of(forced, heavy).instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    # other profiles: always CPU
    cpu = aggregator_of(ServingOptions(profile="cpu"), heavy)
    assert cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize("variant", ["gpu", "gpu-tensorrt"])
def test_gpu_warmup_covers_every_sequence_bucket(repos, variant):
    repo, report = repos[variant]
    encoder = configs(repo)["encoder"]
    buckets = report["chunking"]["seq_buckets"]
    seen = set()
    for sample in encoder.model_warmup:
        assert 1 <= sample.batch_size <= encoder.max_batch_size
        assert set(sample.inputs) == {t.name for t in encoder.input}
        for inp in sample.inputs.values():
            assert inp.data_type == mc.TYPE_INT64 and inp.zero_data  # id 0 = [PAD]: in range
            seen.add((inp.dims[0], sample.batch_size))
    assert seen == {(s, b) for s in buckets for b in (1, encoder.max_batch_size)}


def test_cpu_warmup_is_light_and_portable_has_none(repos):
    cpu = configs(repos["cpu"][0])["encoder"]
    assert {s.batch_size for s in cpu.model_warmup} == {1}
    assert len(cpu.model_warmup) == len(repos["cpu"][1]["chunking"]["seq_buckets"])
    assert not configs(repos["portable"][0])["encoder"].model_warmup


def test_response_cache_on_the_ensemble_only(repos):
    parsed = configs(repos["gpu-tensorrt"][0])
    assert parsed[repository.ENSEMBLE].response_cache.enable
    assert not any(parsed[m].response_cache.enable for m in ("chunker", "encoder", "aggregator"))
    text = (repos["gpu-tensorrt"][0] / repository.ENSEMBLE / "config.pbtxt").read_text()
    assert "--cache-config local,size=" in text
    assert not configs(repos["gpu"][0])[repository.ENSEMBLE].response_cache.enable


# ---------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------


def _shapes(value: str) -> dict[str, tuple[int, int]]:
    out = {}
    for part in value.split(","):
        name, dims = part.split(":")
        assert name not in out, f"{name} twice: several profiles (ORT uses profile 0 only)"
        batch, seq = (int(x) for x in dims.split("x"))
        out[name] = (batch, seq)
    return out


def test_tensorrt_accelerator_block_is_well_formed(repos):
    repo, report = repos["gpu-tensorrt"]
    encoder = configs(repo)["encoder"]
    accelerators = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert len(accelerators) == 1 and accelerators[0].name == "tensorrt"
    params = dict(accelerators[0].parameters)
    assert set(params) <= TRT_KEYS, set(params) - TRT_KEYS
    assert params["precision_mode"] == "FP16"
    assert params["trt_engine_cache_enable"] in ("1", "true")
    assert params["trt_engine_cache_path"].startswith("/")
    assert not params["trt_engine_cache_path"].startswith("/models")  # mounted read-only
    assert int(params["max_workspace_size_bytes"]) >= 1 << 30
    lo, opt, hi = (_shapes(params[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
    names = {t.name for t in encoder.input}
    assert set(lo) == set(opt) == set(hi) == names  # every dynamic input has a range
    for name in names:
        for seq in report["chunking"]["seq_buckets"]:  # every length the chunker emits
            assert lo[name][1] <= seq <= hi[name][1]
        assert lo[name][0] == 1 and hi[name][0] == encoder.max_batch_size  # batch 1..max
        assert lo[name] <= opt[name] <= hi[name]
    assert len({v for v in lo.values()}) == 1 and len({v for v in hi.values()}) == 1
    # no TensorRT block without --tensorrt
    plain = configs(repos["gpu"][0])["encoder"]
    assert not plain.optimization.execution_accelerators.gpu_execution_accelerator


def test_tensorrt_graph_is_plain_onnx(repos):
    repo, report = repos["gpu-tensorrt"]
    model = onnx.load(str(repo / "encoder" / "1" / "model.onnx"))
    domains = {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    assert not domains, f"ORT contrib ops in the TensorRT graph: {domains}"
    assert not {n.op_type for n in model.graph.node} & ORT_FUSED_OPS
    assert not report["encoder"]["fused_ops"]
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.full((2, 384), 1000, dtype=np.int64)
    assert session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].shape == (
        2,
        NUM_LABELS,
    )


def test_gpu_profile_refuses_encoders_it_cannot_serve(repos, tmp_path):
    from longdoc.export.precision import quantize_int8

    cfg = ChunkingConfig()
    labels = ["a", "b", "c"]
    # an INT8 (dynamically quantized) encoder: CPU kernels only
    int8 = tmp_path / "int8"
    (int8 / "encoder" / "1").mkdir(parents=True)
    quantize_int8(
        repos["gpu-tensorrt"][0] / "encoder" / "1" / "model.onnx",
        int8 / "encoder" / "1" / "model.onnx",
    )
    with pytest.raises(ValueError, match="int8"):
        repository.write_configs(int8, ServingOptions(profile="gpu"), 3, labels, cfg)
    repository.write_configs(int8, ServingOptions(profile="cpu"), 3, labels, cfg)  # fine there
    # a fused (ORT contrib ops) graph under TensorRT
    fused = tmp_path / "fused"
    (fused / "encoder" / "1").mkdir(parents=True)
    (fused / "encoder" / "1" / "model.onnx").write_bytes(
        (repos["gpu"][0] / "encoder" / "1" / "model.onnx").read_bytes()
    )
    with pytest.raises(ValueError, match="plain graph"):
        repository.write_configs(
            fused, ServingOptions(profile="gpu", tensorrt=True), 3, labels, cfg
        )
    with pytest.raises(ValueError, match="gpu profile"):
        ServingOptions(profile="cpu", tensorrt=True).resolved()


# ---------------------------------------------------------------------------------------
# the GPU check script, on the CPU
# ---------------------------------------------------------------------------------------


@pytest.mark.integration  # the GPU check script end to end on the CPU (exports, trains)
def test_gpu_check_script_cpu_smoke(tmp_path):
    out = tmp_path / "gpu-checks"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "gpu_checks" / "run_gpu_checks.py"),
            "--cpu-smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    sections = report["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {
        "parity": "pass",
        "throughput": "pass",
        "tokenizer": "pass",
        "gemm": "skipped",
        "training": "pass",
    }
    assert sections["training"]["windows_per_s"] > 0
    assert sections["parity"]["variants"]["ort-cpu-fp16"]["passed"]
    assert "FLOAT16" in sections["parity"]["fp16_weights"]
    rows = sections["throughput"]["results"]
    assert set(rows) == {"ort-cpu-fp16", "torch-cpu-fp32-sdpa"}
    assert all(
        set(r) == {"1", "2"} and all("chunks_per_s" in v for v in r.values()) for r in rows.values()
    )
    assert sections["tokenizer"]["cpu_ms_per_chunk"] > 0
    for key in ("packages", "ort_providers", "nvidia_smi", "python"):
        assert key in report["environment"]
    md = (out / "results.md").read_text()
    assert "| parity | pass |" in md and "chunks/s" in md


def test_gpu_check_script_takes_its_numbers_from_the_package():
    """The script keeps no copy of preset sizes, tolerances or the FLOP formula: it reads
    them from `longdoc.presets` (and the machine from `longdoc.machine`), which load from
    the repository root without torch or onnxruntime, as on a GPU machine that lacks them
    (tests/test_presets.py checks the numbers themselves)."""
    probe = (
        "import json, sys\n"
        "sys.path.insert(0, 'gpu_checks')\n"
        "import run_gpu_checks as checks, longdoc.presets\n"
        "heavy = ('numpy', 'torch', 'onnxruntime', 'onnx', 'transformers', 'tokenizers')\n"
        "print(json.dumps({'same': checks.presets is longdoc.presets,"
        " 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == {"same": True, "loaded": []}
    source = (ROOT / "gpu_checks" / "run_gpu_checks.py").read_text()
    numbers = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)}
    assert not numbers & {30522, 2350, 790, 5e-3, 1e-4}  # vocabulary, ceiling, peak, bounds
    assert "intermediate_size=" not in source and "def flops_per" not in source


def test_portable_encoder_runs_one_window_per_onnxruntime_call_by_default(repos):
    """The measured CPU default (BENCHMARKS.md); other profiles run the whole batch and
    refuse the knob, which their onnxruntime backend does not have."""
    encoder = configs(repos["portable"][0])["encoder"]
    assert encoder.parameters["ort_batch"].string_value == "1"
    assert repos["portable"][1]["serving"]["ort_batch"] == 1
    assert ServingOptions(profile="portable", ort_batch=0).resolved().ort_batch == 0
    assert ServingOptions(profile="cpu").resolved().ort_batch == 0
    with pytest.raises(ValueError, match="portable"):
        ServingOptions(profile="cpu", ort_batch=4).resolved()
    with pytest.raises(ValueError, match=">= 0"):
        ServingOptions(ort_batch=-1).resolved()


# ---------------------------------------------------------------------------------------
# configs as messages; the report's serving facts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_config_is_one_pointer_line_then_the_message(repos, variant):
    """Written from ModelConfig messages: text_format reproduces each file exactly, after
    its comment lines (one pointer to docs/GPU.md; the cache caveat where it applies)."""
    repo, _ = repos[variant]
    for name, cfg in configs(repo).items():
        lines = (repo / name / "config.pbtxt").read_text().splitlines(keepends=True)
        comments = [line for line in lines if line.startswith("#")]
        assert lines[: len(comments)] == comments and "docs/GPU.md" in comments[0]
        assert len(comments) == (2 if cfg.response_cache.enable else 1), comments
        body = "".join(lines[len(comments) :])
        assert body == text_format.MessageToString(cfg, use_short_repeated_primitives=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_report_serving_facts_match_the_configs(repos, variant):
    """What a benchmark reads from export_report.json is what Triton is told."""
    repo, report = repos[variant]
    serving = report["serving"]
    parsed = configs(repo)
    encoder = parsed["encoder"]
    assert report["profile"] == serving["profile"] == VARIANTS[variant][0]
    assert serving["max_batch_size"] == encoder.max_batch_size
    assert serving["preferred_batch_sizes"] == list(encoder.dynamic_batching.preferred_batch_size)
    assert serving["queue_delay_us"] == encoder.dynamic_batching.max_queue_delay_microseconds
    assert serving["seq_buckets"] == report["chunking"]["seq_buckets"]
    assert serving["max_chunks"] == report["chunking"]["max_chunks"]
    for model in ("chunker", "encoder", "aggregator"):
        (group,) = parsed[model].instance_group
        assert serving["instances"][model] == group.count
        assert (
            mc.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_" + serving["kinds"][model].upper()
        )
    if encoder.backend == "python":
        assert serving["ort_batch"] == int(encoder.parameters["ort_batch"].string_value)
        assert serving["ort_threads"]["encoder"] == int(
            encoder.parameters["ort_threads"].string_value
        )
    warm = [[s.inputs["input_ids"].dims[0], s.batch_size] for s in encoder.model_warmup]
    assert serving["warmup"] == warm
    assert serving["tensorrt"] == bool(
        encoder.optimization.execution_accelerators.gpu_execution_accelerator
    )
    assert serving["response_cache"] == parsed[repository.ENSEMBLE].response_cache.enable
    assert report["encoder"]["precision"] in ("fp32", "fp16", "int8")
    # and the encoder's sizes, for FLOP counts (the tiny preset), without reading the graph
    tiny = {"layers": 2, "hidden": 64, "ffn": 128, "heads": 4, "vocab": 30522, "max_positions": 512}
    assert report["architecture"] == tiny


def test_tensorrt_parity_is_labelled_with_the_graph_it_checked(repos):
    """--tensorrt serves the plain FP32 graph (TensorRT builds FP16 engines at load): the
    parity report says fp32, with the FP32 tolerance, and names what it ran."""
    _, report = repos["gpu-tensorrt"]
    assert report["precision"] == "fp16" and report["tensorrt"]  # what is served
    assert report["encoder"]["precision"] == "fp32"  # what the file is
    parity = report["parity"]
    assert parity["precision"] == "fp32" and parity["tolerance"] == 1e-4 and parity["passed"]
    assert "TensorRT" in parity["checked"] and "model.onnx" in parity["checked"]
    gpu = repos["gpu"][1]["parity"]  # without TensorRT the fp16 file itself is checked
    assert gpu["precision"] == "fp16" and "fp16 graph" in gpu["checked"]


def test_max_batch_size_is_free_of_document_length_and_slices_fit_it():
    """Documents of any length: the dispatcher sends at most max_batch_size windows per
    encoder request, so the encoder's batch size no longer follows max_chunks."""
    for chunking in (ChunkingConfig(), ChunkingConfig(max_chunks=100, overflow="head")):
        assert sizing.plan(ServingOptions(), chunking).max_batch_size == 64
    small = sizing.plan(ServingOptions(profile="gpu", max_batch_size=8), ChunkingConfig())
    assert (small.max_batch_size, small.slice_windows) == (8, 8)  # capped at max_batch_size
    assert sizing.plan(ServingOptions(slice_windows=5), ChunkingConfig()).slice_windows == 5
    with pytest.raises(ValueError, match="slice_windows must be >= 1"):
        sizing.plan(ServingOptions(slice_windows=0), ChunkingConfig())


@pytest.mark.parametrize("variant", VARIANTS)
def test_dispatcher_reaches_the_encoder_in_slices_that_fit(repos, variant):
    repo, report = repos[variant]
    parsed = configs(repo)
    dispatcher, encoder = parsed["dispatcher"], parsed["encoder"]
    params = {k: v.string_value for k, v in dispatcher.parameters.items()}
    assert dispatcher.backend == "python" and dispatcher.max_batch_size == 0
    assert params["encoder_model"] == encoder.name
    assert 1 <= int(params["slice_windows"]) <= encoder.max_batch_size
    assert int(params["inflight_slices"]) >= 1
    assert report["serving"]["slice_windows"] == int(params["slice_windows"])
    steps = [s.model_name for s in parsed[repository.ENSEMBLE].ensemble_scheduling.step]
    assert steps == ["chunker", "dispatcher", "aggregator"]  # the encoder is reached by BLS
    assert (repo / "dispatcher" / "1" / "model.py").is_file()
