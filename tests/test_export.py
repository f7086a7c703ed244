"""Export + parity for every head at FP32 and FP16 (INT8 too) on a tiny random model and on
the real all-MiniLM-L6-v2 weights; the CLI's errors for bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from longdoc.export.parity import TOLERANCES

from longdoc import corpus
from longdoc.chunking import ChunkingConfig, chunk_text, load_tokenizer
from longdoc.heads import HEADS
from longdoc.runtime import OnnxPipeline


def assert_passed(report: dict, precision: str) -> None:
    parity = report["parity"]
    assert parity["passed"], parity
    assert parity["max_abs_logits"] <= TOLERANCES[precision]
    assert max(parity["chunks"]) >= 10 and min(parity["chunks"]) == 1


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("head", HEADS)
def test_tiny_export_parity(export_repo, head, precision):
    repo, report = export_repo(preset="tiny", head=head, precision=precision)
    assert_passed(report, precision)
    for name in ("encoder", "aggregator"):
        onnx.checker.check_model(str(repo / name / "1" / "model.onnx"))
    assert (repo / "chunker" / "1" / "tokenizer.json").is_file()
    assert ChunkingConfig.load(repo / "chunker" / "1" / "chunking.json") == ChunkingConfig()
    labels = (repo / "document_classifier" / "labels.txt").read_text().split()
    assert labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    # single-label: the served rule is the argmax, written next to labels.txt and reported
    decision = json.loads((repo / "document_classifier" / "decision.json").read_text())
    assert decision == report["decision"] == {"problem": "single-label", "kind": "argmax"}
    parity = report["parity"]
    assert parity["problem"] == "single-label" and parity["decisions_agreement"] == 1.0
    assert parity["max_abs_probabilities"] <= TOLERANCES[precision]
    if head != "logits-max" or precision == "fp32":
        # logits-max's weights mark the maximum's window (0 or 1): in FP16 a near-tie
        # between two windows may flip, a difference of 1 with the logits still in bound
        assert parity["max_abs_chunk_weights"] <= TOLERANCES[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("head", ["mean-pool", "transformer"])
def test_minilm_pooled_heads_parity(export_repo, minilm, head, precision):
    _, report = export_repo(checkpoint=minilm, head=head, precision=precision, random_head=True)
    assert_passed(report, precision)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("head", ["logits-mean", "logits-max"])
def test_minilm_classifier_parity(export_repo, classifier_checkpoint, head, precision):
    repo, report = export_repo(checkpoint=classifier_checkpoint, head=head, precision=precision)
    assert_passed(report, precision)
    assert report["labels"] == ["contract", "filing", "report"]
    if precision == "int8":  # full-range weights for VNNI, the FP32 graph for other CPUs
        assert report["int8"]["settings"]["reduce_range"] is False
        assert report["int8"]["fp32_fallback"] == "model_fp32.onnx"
        assert (repo / "encoder" / "1" / "model_fp32.onnx").is_file()
        assert report["int8"]["fp32_fallback_parity"]["passed"]
        assert report["int8"]["fp32_fallback_parity"]["tolerance"] == 1e-4
        assert report["int8"]["export_cpu"]["kernels"] in ("vnni", "avx2", "other")
    if precision == "fp16":
        weights = {k for k in report["encoder"]["initializer_dtypes"]}
        assert "FLOAT16" in weights
        assert report["encoder"]["fused_ops"]["Attention"] == 6


def test_onnx_matches_hugging_face_on_every_window(export_repo, classifier_checkpoint):
    """Done-when of the export issue: ONNX == the HF model itself, window by window."""
    from transformers import BertForSequenceClassification

    repo, _ = export_repo(checkpoint=classifier_checkpoint, head="logits-mean")
    hf = BertForSequenceClassification.from_pretrained(classifier_checkpoint).eval()
    tokenizer = load_tokenizer(classifier_checkpoint)
    text = corpus.document(6000, seed=11)
    chunks = chunk_text(text, tokenizer, ChunkingConfig())
    assert chunks.num_chunks >= 20
    pipeline = OnnxPipeline(repo)
    onnx_logits = pipeline.encode(chunks.input_ids, chunks.attention_mask)
    for row in range(chunks.num_chunks):
        width = int(chunks.attention_mask[row].sum())
        ids = torch.from_numpy(chunks.input_ids[row : row + 1, :width])
        with torch.no_grad():
            expected = hf(input_ids=ids).logits[0].numpy()  # unpadded, HF's own forward
        np.testing.assert_allclose(onnx_logits[row], expected, atol=1e-4)
    result = pipeline.classify([text])[0]
    np.testing.assert_allclose(result.logits, onnx_logits.mean(0), atol=1e-5)


def test_head_file_roundtrip(tmp_path, minilm):
    """Format 2: a BertModel directory plus head.json + head.safetensors."""
    import shutil

    from longdoc.checkpoint import load_checkpoint, save_head
    from longdoc.reference import classify

    model = load_checkpoint(minilm, "transformer", random_head=True, num_labels=4, seed=5)
    ckpt = tmp_path / "encoder_with_head"
    shutil.copytree(minilm, ckpt)
    save_head(model, ckpt)
    spec = json.loads((ckpt / "head.json").read_text())
    assert spec["head"] == "transformer" and len(spec["labels"]) == 4
    loaded = load_checkpoint(ckpt)  # head type read from head.json
    texts = corpus.documents([400], seed=2)
    a, b = classify(model, texts)[0], classify(loaded, texts)[0]
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-6)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`longdoc export ARGS` in this process (the entry point's own `main`, its exit code
    and output): a subprocess would spend seconds importing torch for each refusal."""
    import contextlib
    import io

    from longdoc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["export", *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(
        ["longdoc", "export", *args], code, out.getvalue(), err.getvalue()
    )


def test_cli_missing_checkpoint(tmp_path):
    result = run_cli("--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2  # unusable input
    assert "longdoc export: error: " in result.stderr and "does not exist" in result.stderr


def test_cli_unknown_head(tmp_path):
    result = run_cli("--preset", "tiny", "--head", "cls-token", "--output", str(tmp_path))
    assert result.returncode == 2
    assert "cls-token" in result.stderr and "logits-mean" in result.stderr
    assert "attention" in result.stderr  # a valid choice, listed


def test_parity_checks_the_decisions_of_the_graph(export_repo):
    """The parity check compares the graph's DECISIONS with the model's rule: a model whose
    decision differs from the one baked into the exported aggregator fails it."""
    from longdoc.export import parity

    from longdoc.checkpoint import load_preset
    from longdoc.decision import Decision

    repo, _ = export_repo(preset="tiny", head="attention")
    model = load_preset("tiny", "attention", num_labels=3)
    texts = parity.parity_texts((25, 300))
    assert parity.check(model, repo, "fp32", texts).passed
    # the files answer softmax + argmax; a multi-label rule expects sigmoids and thresholds
    model.decision = Decision.multi(3, 0.01)
    result = parity.check(model, repo, "fp32", texts)
    assert not result.passed and result.decisions_agreement == 0.0
    assert result.problem == "multi-label" and result.max_abs_probabilities > 0.1


def test_cli_overlap_not_below_window(tmp_path):
    result = run_cli(
        "--preset", "tiny", "--max-length", "128", "--overlap", "126", "--output", str(tmp_path)
    )
    assert result.returncode == 2  # flags that do not fit together: a usage error
    assert "longdoc export: error: " in result.stderr and "overlap" in result.stderr


def test_cli_bare_encoder_needs_head(tmp_path, minilm):
    result = run_cli("--checkpoint", str(minilm), "--output", str(tmp_path))
    assert result.returncode == 2  # unusable input
    assert "longdoc export: error: " in result.stderr and "bare encoder" in result.stderr


def test_cli_export_end_to_end(tmp_path, classifier_checkpoint):
    out = tmp_path / "repo"
    result = run_cli(
        "--checkpoint",
        str(classifier_checkpoint),
        "--head",
        "logits-mean",
        "--precision",
        "fp32",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stderr
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["head"] == "logits-mean"


@pytest.mark.integration  # builds a wheel and installs it: seconds of the fast layer
def test_export_works_from_a_wheel_install(tmp_path):
    """A wheel carries the Python-backend model.py files (package data), so `longdoc export`
    does not need a source checkout: build the wheel, import it from outside the checkout."""
    from pathlib import Path
    from zipfile import ZipFile

    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("longdoc-*.whl")
    site = tmp_path / "site"
    ZipFile(wheel).extractall(site)
    for name in ("chunker", "encoder", "aggregator"):
        assert (site / "longdoc" / "model_sources" / name / "1" / "model.py").is_file()
    # one import package: nothing generic ("export", "client", "server") in site-packages
    (info,) = site.glob("longdoc-*.dist-info")
    assert (info / "top_level.txt").read_text().split() == ["longdoc"]
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == [
        "longdoc"
    ]
    out = tmp_path / "repo"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, longdoc.export.repository as r; from longdoc.cli import main; "
            "assert str(r.SOURCE_REPOSITORY).startswith(sys.argv[1]), r.SOURCE_REPOSITORY; "
            "sys.exit(main(sys.argv[2:]))",
            str(site),
            "export",
            "--preset",
            "tiny",
            "--skip-parity",
            "--output",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("chunker", "encoder", "aggregator"):
        assert (out / name / "1" / "model.py").read_bytes() == (
            root / "model_repository" / name / "1" / "model.py"
        ).read_bytes()


def test_cli_max_batch_size_below_max_chunks_is_fine(tmp_path):
    """Documents reach the encoder in slices of at most its max_batch_size (the dispatcher),
    so a cap of 16 windows and batches of 8 go together."""
    result = run_cli(
        "--preset",
        "tiny",
        "--max-chunks",
        "16",
        "--overflow",
        "head",
        "--max-batch-size",
        "8",
        "--skip-parity",
        "--output",
        str(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o" / "export_report.json").read_text())
    assert report["serving"]["max_batch_size"] == 8 and report["serving"]["slice_windows"] <= 8


STUB_PROBE = r"""
import importlib.util, json, sys, types
from pathlib import Path

model_dir, name = Path(sys.argv[1]), sys.argv[2]
# Triton provides this module inside the stub; any attribute is a placeholder class here
utils = types.ModuleType("triton_python_backend_utils")
utils.__getattr__ = lambda attr: type(attr, (), {})
sys.modules["triton_python_backend_utils"] = utils
spec = importlib.util.spec_from_file_location("model", model_dir / "1" / "model.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = json.loads((model_dir / "config.json").read_text())
module.TritonPythonModel().initialize({
    "model_config": json.dumps(config), "model_repository": str(model_dir),
    "model_version": "1",
})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"heavy": heavy, "onnxruntime": "onnxruntime" in sys.modules}))
"""


def test_serving_stubs_never_import_torch_or_transformers(export_repo, tmp_path):
    """Each portable stub, in a fresh interpreter: its model.py imported and initialized on
    a real export (as Triton's stub does), then no torch/transformers in sys.modules. Torch
    cost the aggregator stub ~230 MB of resident memory (RELIABILITY.md)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    repo, _ = export_repo(preset="tiny")
    stubs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if cfg.backend == "python":
            stubs[cfg.name] = cfg
    assert {"chunker", "encoder", "aggregator"} <= set(stubs)
    for name, cfg in stubs.items():
        # the Python backend hands initialize() the config as JSON, parameters included
        (repo / name / "config.json").write_text(
            json_format.MessageToJson(cfg, preserving_proto_field_name=True)
        )
        proc = subprocess.run(
            [sys.executable, "-c", STUB_PROBE, str(repo / name), name],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        probe = json.loads(proc.stdout.splitlines()[-1])
        assert probe["heavy"] == [], (name, probe["heavy"][:10])
        if name in ("encoder", "aggregator"):
            assert probe["onnxruntime"], name  # the probe did load the session


def test_int8_encoder_file_follows_the_serving_cpu(tmp_path, monkeypatch):
    """An INT8 directory with the FP32 graph beside it serves INT8 only on VNNI CPUs."""
    from longdoc.runtime import encoder_file

    (tmp_path / "model.onnx").write_bytes(b"int8")
    monkeypatch.setenv("LONGDOC_INT8_KERNELS", "vnni")
    assert encoder_file(tmp_path) == tmp_path / "model.onnx"
    (tmp_path / "model_fp32.onnx").write_bytes(b"fp32")
    assert encoder_file(tmp_path) == tmp_path / "model.onnx"
    for path in ("avx2", "other"):
        monkeypatch.setenv("LONGDOC_INT8_KERNELS", path)
        assert encoder_file(tmp_path) == tmp_path / "model_fp32.onnx"
    monkeypatch.delenv("LONGDOC_INT8_KERNELS")
    from longdoc.machine import int8_kernel_path

    expected = "model.onnx" if int8_kernel_path() == "vnni" else "model_fp32.onnx"
    assert encoder_file(tmp_path).name == expected, f"this CPU: {int8_kernel_path()}"


def test_serve_says_what_an_int8_encoder_runs_on_this_cpu(tmp_path, monkeypatch):
    import json

    from longdoc.server.cli import encoder_note

    assert encoder_note(tmp_path) is None  # no export report
    (tmp_path / "export_report.json").write_text(json.dumps({"precision": "fp32"}))
    assert encoder_note(tmp_path) is None
    (tmp_path / "export_report.json").write_text(json.dumps({"precision": "int8"}))
    monkeypatch.setenv("LONGDOC_INT8_KERNELS", "vnni")
    assert encoder_note(tmp_path) == "INT8 (this CPU's integer kernels: vnni)"
    monkeypatch.setenv("LONGDOC_INT8_KERNELS", "avx2")
    assert "serve an FP32 export on this machine" in encoder_note(tmp_path)  # cpu profile
    (tmp_path / "encoder" / "1").mkdir(parents=True)
    (tmp_path / "encoder" / "1" / "model_fp32.onnx").write_bytes(b"")
    assert encoder_note(tmp_path).startswith("FP32 graph of this INT8 export")


@pytest.mark.integration
def test_a_pickle_that_runs_code_is_refused_with_a_clear_error(tmp_path, minilm):
    """`pytorch_model.bin` is read with torch.load(weights_only=True): a pickle with code
    is refused (nothing runs) and `longdoc export` says why, exit 2, no traceback."""
    import json
    import shutil
    import subprocess
    import sys

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(minilm / "tokenizer.json", ckpt / "tokenizer.json")
    config = json.loads((minilm / "config.json").read_text())
    config |= {"architectures": ["BertForSequenceClassification"]}
    config |= {"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}}
    (ckpt / "config.json").write_text(json.dumps(config))
    torch.save({"weight": Payload()}, ckpt / "pytorch_model.bin")
    out = subprocess.run(
        [sys.executable, "-m", "longdoc.cli", "export", "--checkpoint", str(ckpt)]
        + ["--output", str(tmp_path / "repo"), "--skip-parity"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "longdoc export: error:" in out.stderr and "never code" in out.stderr
    assert "Traceback" not in out.stderr
    assert not marker.exists()
