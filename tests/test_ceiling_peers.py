"""`longdoc bench --ceiling` / `--peers`: the arithmetic, the GEMM timing and its kernels,
and the peers on the tiny preset (belt-nlp's windows and decisions equal ours)."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from longdoc.bench import ceiling, peers

MINILM = {"layers": 6, "hidden": 384, "ffn": 1536, "heads": 12, "source": "minilm"}
BERT_LARGE = {"layers": 24, "hidden": 1024, "ffn": 4096, "heads": 16, "source": "large"}
TINY = {"layers": 2, "hidden": 64, "ffn": 128, "heads": 4, "source": "preset:tiny"}


def test_window_flops_match_the_closed_form():
    for arch in (MINILM, BERT_LARGE, TINY):
        for s in (128, 384, 512):
            h, f = arch["hidden"], arch["ffn"]
            expected = arch["layers"] * (2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h)
            assert ceiling.window_flops(arch, s) == pytest.approx(expected)
    # DESIGN.md: a 512-token MiniLM window is about 13 GFLOP, a bert-large one about 335
    assert ceiling.window_flops(MINILM, 512) / 1e9 == pytest.approx(13.3, abs=0.1)
    assert ceiling.window_flops(BERT_LARGE, 512) / 1e9 == pytest.approx(335, abs=1)
    # attention's own products stay FP32 in the INT8 graph
    kinds = {s["name"]: s["quantized"] for s in ceiling.gemm_shapes(MINILM, 512)}
    assert kinds == {
        "qkv": True,
        "attn_out": True,
        "ffn_in": True,
        "ffn_out": True,
        "scores": False,
        "context": False,
    }


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_measure_gemm_runs_the_quantize_dynamic_path(precision):
    shape = {"name": "t", "m": 64, "k": 96, "n": 128, "batch": 1, "quantized": True}
    out = ceiling.measure_gemm(shape, precision, threads=1, min_time_s=0.02, profile=True)
    assert out["precision"] == precision
    assert out["flops"] == 2 * 64 * 96 * 128 and out["gflops_per_s"] > 0
    assert out["runs"] >= 3 and out["best_s"] <= out["median_s"]
    ops = set(out["kernels"])
    if precision == "fp32":
        assert ops == {"MatMul"}
    else:  # DynamicQuantizeLinear + MatMulInteger, fused by onnxruntime (or not)
        assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat"}
    assert all(k["provider"] == "CPUExecutionProvider" for k in out["kernels"].values())


def _int8_matmul_error(tmp_path, settings: dict) -> float:
    """max |INT8 - FP32| / max |FP32| of one quantized MatMul on this CPU."""
    import onnx
    import onnxruntime as ort

    shape = {"name": "t", "m": 32, "k": 64, "n": 48, "batch": 1, "quantized": True}
    onnx.save(ceiling.matmul_model(shape), str(tmp_path / "f.onnx"))
    ceiling._quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", settings)
    a = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    ref, got = (
        ort.InferenceSession(str(tmp_path / n)).run(None, {"A": a})[0] for n in ("f.onnx", "q.onnx")
    )
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def test_int8_matmul_is_close_to_fp32_where_int8_is_served(tmp_path):
    """What must hold on each kind of x86-64 CPU (DESIGN.md, issue #21):
    * 7-bit weights (reduce_range) are within 5% of FP32 on every CPU (no int16 saturation);
    * with VNNI, export's full-range weights are within 5% too, and INT8 is served;
    * without VNNI, the AVX2 kernel may saturate on full-range weights (23% measured), and
      the portable encoder serves the FP32 graph that an INT8 export ships beside them."""
    from longdoc.machine import int8_kernel_path, isa
    from longdoc.runtime import encoder_file

    cpu = f"this CPU: {int8_kernel_path()} kernels ({', '.join(isa()) or 'no AVX2'})"
    assert ceiling.INT8_DEFAULT["reduce_range"] is False, cpu
    reduced = _int8_matmul_error(tmp_path, {**ceiling.INT8_DEFAULT, "reduce_range": True})
    assert reduced < 0.05, cpu
    full = _int8_matmul_error(tmp_path, ceiling.INT8_DEFAULT)
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model_fp32.onnx").write_bytes(b"")
    served = encoder_file(tmp_path).name
    if int8_kernel_path() == "vnni":
        assert full < 0.05, cpu
        assert served == "model.onnx", cpu
    else:
        assert served == "model_fp32.onnx", f"{cpu}; full-range INT8 error {full:.1%}"


def test_ceiling_and_served_fraction():
    lengths = Counter({128: 3, 256: 1})
    out = ceiling.ceiling_for(TINY, lengths, "fp32", threads=1, min_time_s=0.01, profile=False)
    assert out["windows"] == 4 and set(out["by_length"]) == {"128", "256"}
    expected = sum(
        lengths[s]
        * TINY["layers"]
        * sum(g["flops"] / (g["gflops_per_s"] * 1e9) for g in out["by_length"][str(s)]["gemms"])
        for s in lengths
    )
    assert out["ceiling_seconds"] == pytest.approx(expected)
    assert out["flops"] == pytest.approx(
        3 * ceiling.window_flops(TINY, 128) + ceiling.window_flops(TINY, 256)
    )

    class Doc:
        num_tokens, seq_len, num_chunks = 1000, 128, 2

    served = {"chunks_per_s": 10.0, "tokens_per_s": 0.5 * 2000 / out["ceiling_seconds"]}
    frac = ceiling.served_fraction(out, [Doc(), Doc()], served)
    assert frac["fraction"] == pytest.approx(0.5)
    assert ceiling.served_fraction(out, [Doc()], None) is None


def test_perf_samples_are_classified():
    script = "\n".join(
        ["     7f0000001000 (/nowhere/libonnxruntime.so)"] * 30
        + ["     7f0000009000 (/nowhere/libonnxruntime.so)"] * 10
        + ["     55550000 (/usr/bin/python3.11)"] * 10
    )
    out = ceiling._classify_samples(script, {"/nowhere/libonnxruntime.so": 0x7F0000000000})
    assert out["samples"] == 50
    assert out["by_library"]["libonnxruntime.so"] == pytest.approx(0.8)
    assert out["hottest"][0]["start"] == "0x1000" and out["hottest"][0]["share"] == 0.6


@pytest.mark.skipif(not shutil.which("perf") or not shutil.which("objdump"), reason="no perf")
def test_perf_names_the_fp32_kernel_isa():
    shape = {"name": "s", "m": 256, "k": 256, "n": 256, "batch": 1, "quantized": True}
    out = ceiling.perf_kernels("fp32", shape, seconds=1.0)
    if not out["available"]:
        pytest.skip(f"perf cannot sample here: {out['reason']}")
    assert out["samples"] > 0 and out["hottest"]
    flags = open("/proc/cpuinfo").read()
    if " avx512f" in flags:
        assert "avx512f fma (vfmadd*ps zmm)" in out["isa_seen"]


@pytest.fixture(scope="module")
def tiny_repo(export_repo):
    return export_repo(preset="tiny", head="logits-mean")[0]


def _texts(tiny_repo, n):
    from longdoc.bench.workload import build_corpus, load_chunking

    tokenizer, chunking = load_chunking(str(tiny_repo))
    docs = build_corpus(n, 0, tokenizer, chunking)
    return docs, [d.text for d in docs]


def test_architecture_and_ceiling_of_a_repository(tiny_repo):
    arch = ceiling.architecture(tiny_repo)
    assert {k: arch[k] for k in ("layers", "hidden", "ffn", "heads")} == {
        "layers": 2,
        "hidden": 64,
        "ffn": 128,
        "heads": 4,
    }
    assert ceiling._arch_from_graph(tiny_repo / "encoder" / "1" / "model.onnx", "")["layers"] == 2
    docs, _ = _texts(tiny_repo, 2)
    served = {"chunks_per_s": 5.0, "tokens_per_s": 2000.0}
    out = ceiling.run_ceiling(tiny_repo, docs, served, threads=1, min_time_s=0.01, perf=False)
    assert set(out["ceilings"]) == {"fp32", "int8"}
    assert out["served"]["fraction"] > 0
    assert out["encoder_profile"]["ops"] and out["encoder_profile"]["ms_per_window"] > 0
    text = "\n".join(ceiling.ceiling_lines(out))
    assert "ceiling windows/s" in text and "served against" in text


def test_belt_reads_our_windows_and_agrees(tiny_repo):
    """belt-nlp with our window/overlap cuts the same windows: same probabilities as the
    in-process onnxruntime pipeline on the same weights (logits-mean = belt's mean)."""
    import torch
    from belt_nlp.bert_classifier_with_pooling import BertClassifierWithPooling
    from longdoc.bench.baselines import load_reference_model

    from longdoc.runtime import OnnxPipeline

    model = load_reference_model(tiny_repo)
    cfg = model.chunking
    body = cfg.body_length
    belt = BertClassifierWithPooling(
        num_labels=model.num_labels,
        batch_size=1,
        learning_rate=0.0,
        epochs=0,
        chunk_size=body,
        stride=body - cfg.overlap,
        minimal_chunk_length=cfg.overlap + 1,
        tokenizer=peers.hf_tokenizer(model.tokenizer_path, cfg.max_length),
        neural_network=model.encoder,
        pretrained_model_name_or_path=None,
        device="cpu",
    )
    docs, texts = _texts(tiny_repo, 3)
    texts = [*texts, "word " * 890, "word " * 893]  # tails inside / past the last window
    pipeline = OnnxPipeline(tiny_repo)
    with torch.inference_mode():
        for text in texts:
            got = belt.predict_scores([text])[0].numpy()
            want = pipeline.classify([text])[0].probabilities
            assert np.abs(got - want).max() < 1e-4


def test_peers_in_their_own_processes(tiny_repo):
    docs, texts = _texts(tiny_repo, 2)
    served = {1: 0, 0: 0}
    out = peers.run_peers(
        tiny_repo,
        texts,
        docs,
        ("hf_pipeline", "naive"),
        time_limit_s=60,
        log=lambda m: None,
        served_labels=served,
    )
    for name in ("hf_pipeline", "naive"):
        p = out["peers"][name]
        assert "error" not in p, p.get("error")
        assert p["docs"] == 2 and p["complete"] and p["peak_rss_mb"] > 50
        assert p["tokens"] == sum(d.num_tokens for d in docs)
        assert p["latency_ms"]["p50"] > 0 and p["agreement_with_served"]["docs"] == 2
    assert out["peers"]["naive"]["read_fraction"] == 1.0
    long = sum(d.num_tokens > 510 for d in docs)
    assert (out["peers"]["hf_pipeline"]["read_fraction"] < 1.0) == bool(long)
    out["served"] = {"docs": 2, "docs_per_s": 1.0, "tokens_per_s": 1000.0, "p50_c1_ms": 5.0}
    text = "\n".join(peers.peers_table(out))
    assert "| hf_pipeline | 2 |" in text and "served over naive" in text


def test_peer_errors_are_reported(tiny_repo):
    with pytest.raises(ValueError):
        peers.run_peer("nope", tiny_repo, ["x"], [])


def test_bench_flags(capsys):
    from longdoc.cli import main

    assert main(["bench", "--ceiling", "--concurrency", "1"]) == 2
    assert "--ceiling needs --repository" in capsys.readouterr().err
    assert main(["bench", "--peers", "--concurrency", "1"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "--peers", "belt,nope"])


def test_report_sections_render_ceiling_and_peers():
    from longdoc.bench import report

    assert report.SECTIONS["ceiling"] is ceiling.ceiling_lines
    assert report.SECTIONS["peers"] is peers.peers_table
