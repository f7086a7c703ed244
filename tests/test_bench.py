"""`longdoc bench`: the statistics it computes, the corpus it sends, and one short real run
against a served tiny model (gRPC with baselines, HTTP without)."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from longdoc.bench import measurement, stats

from longdoc import corpus

# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(n):
    rng = np.random.default_rng(n)
    values = list(rng.lognormal(0, 1.5, size=n))
    for q in (0, 1, 10, 25, 50, 90, 95, 99, 99.9, 100):
        assert stats.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)
    ints = [int(v) for v in rng.integers(0, 7, size=n)]  # ties
    for q in (0, 33.3, 50, 99, 100):
        assert stats.percentile(ints, q) == pytest.approx(np.percentile(ints, q), rel=1e-12)


def test_percentile_edges():
    assert np.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)
    summary = stats.latency_summary([0.1, 0.2, 0.3, 0.4])
    assert summary["count"] == 4 and summary["p50"] == pytest.approx(250.0)
    assert summary["max"] == pytest.approx(400.0) and summary["mean"] == pytest.approx(250.0)
    assert stats.latency_summary([])["p99"] is None


def test_is_stable():
    assert stats.is_stable([100, 105, 96], 0.10)
    assert not stats.is_stable([100, 125, 96], 0.10)
    assert not stats.is_stable([], 0.10) and not stats.is_stable([0, 0], 0.1)


def _raw(grpc_style: bool, scale: int) -> dict:
    """A statistics reply in HTTP form (ints, every field) or gRPC JSON (strings, zeros
    omitted)."""

    def cn(count, ns):
        if grpc_style:
            return {"count": str(count), "ns": str(ns)} if count else {}
        return {"count": count, "ns": ns}

    num = str if grpc_style else int
    return {
        "model_stats": [
            {
                "name": "encoder",
                "version": "1",
                "inference_count": num(40 * scale),
                "execution_count": num(4 * scale),
                "inference_stats": {
                    "success": cn(10 * scale, 10**9 * scale),
                    "fail": cn(0, 0),
                    "queue": cn(10 * scale, 2 * 10**8 * scale),
                    "compute_input": cn(10 * scale, 10**6 * scale),
                    "compute_infer": cn(10 * scale, 6 * 10**8 * scale),
                    "compute_output": cn(10 * scale, 10**6 * scale),
                },
                "batch_stats": [
                    {
                        "batch_size": num(8),
                        "compute_input": cn(2 * scale, 10**5 * scale),
                        "compute_infer": cn(2 * scale, 10**8 * scale),
                        "compute_output": cn(2 * scale, 10**5 * scale),
                    },
                    {
                        "batch_size": num(16),
                        "compute_input": cn(scale, 10**5 * scale),
                        "compute_infer": cn(scale, 2 * 10**8 * scale),
                        "compute_output": cn(scale, 10**5 * scale),
                    },
                ]
                + (
                    [
                        {
                            "batch_size": num(4),
                            "compute_input": cn(1, 1),
                            "compute_infer": cn(1, 10**7),
                            "compute_output": cn(1, 1),
                        }
                    ]
                    if scale > 1
                    else []
                ),
            }
        ]
    }


@pytest.mark.parametrize("grpc_style", [False, True])
def test_statistics_delta(grpc_style):
    before = measurement.parse_statistics(_raw(grpc_style, 1))
    after = measurement.parse_statistics(_raw(grpc_style, 3))
    delta = measurement.stats_delta(before, after)["encoder"]
    assert delta.inference_count == 80 and delta.execution_count == 8
    summary = measurement.summarize_model(delta, seconds=2.0)
    assert summary["requests"] == 20 and summary["avg_batch"] == pytest.approx(10.0)
    assert summary["queue_ms"] == pytest.approx(20.0)  # 4e8 ns over 20 requests
    assert summary["compute_infer_ms"] == pytest.approx(60.0)
    assert summary["batch_histogram"] == {"4": 1, "8": 4, "16": 2}
    # batch 8: 2e8 + 2 x 2e5 ns; batch 16: 4e8 + 2 x 2e5; the new batch of 4: 1e7 + 2
    busy = (6 * 10**8 + 8 * 10**5 + 10**7 + 2) / 1e9
    assert summary["busy_fraction"] == pytest.approx(busy / 2.0)


# --------------------------------------------------------------------------- corpus


def test_token_lengths_distribution():
    a = corpus.benchmark_token_lengths(3000, seed=5)
    assert a == corpus.benchmark_token_lengths(3000, seed=5)
    assert a != corpus.benchmark_token_lengths(3000, seed=6)
    assert min(a) >= corpus.BENCH_MIN_TOKENS and max(a) <= 24_576
    lengths = np.array(a)
    assert 1_300 < np.median(lengths) < 2_300
    assert 0.09 < (lengths >= 8_000).mean() < 0.20  # the tail
    assert corpus.max_tokens_for(64) == 24_576 and corpus.max_tokens_for(1) == 510


def test_benchmark_corpus_is_deterministic(tokenizer):
    from longdoc.bench.workload import prepare_corpus

    from longdoc.chunking import ChunkingConfig

    texts = corpus.benchmark_corpus(8, seed=3, tokenizer=tokenizer, max_tokens=6_000)
    assert texts == corpus.benchmark_corpus(8, seed=3, tokenizer=tokenizer, max_tokens=6_000)
    assert texts != corpus.benchmark_corpus(8, seed=4, tokenizer=tokenizer, max_tokens=6_000)
    targets = corpus.benchmark_token_lengths(8, seed=3, max_tokens=6_000)
    counts = [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    assert all(c <= t for c, t in zip(counts, targets)) and counts == targets
    assert len(set(texts)) == len(texts)
    docs = prepare_corpus(texts, tokenizer, ChunkingConfig(max_chunks=16))
    assert [d.num_tokens for d in docs] == counts
    assert all(d.computed_tokens >= d.needed_tokens for d in docs)


def test_trim_keeps_a_prefix_of_the_tokens(tokenizer):
    text = corpus.document(400, seed=9)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    for limit in random.Random(0).sample(range(5, 380), 12):
        cut = corpus.trim_to_tokens(text, limit, tokenizer)
        assert text.startswith(cut)
        assert tokenizer.encode(cut, add_special_tokens=False).ids == ids[:limit]


# --------------------------------------------------------------------------- a real run

QUICK = ["--warmup-s", "0.5", "--window-s", "1", "--max-point-s", "3", "--min-window-docs", "2"]


@pytest.fixture(scope="module")
def tiny_server(export_repo, serve):
    repo, _ = export_repo(preset="tiny")
    return repo, serve(repo)


def test_bench_help():
    from longdoc.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench", "--help"])
    assert exc.value.code == 0


def test_bench_grpc_with_baselines(tiny_server, tmp_path, capsys):
    from longdoc.cli import main

    repo, served = tiny_server
    out = tmp_path / "run"
    code = main(
        [
            "bench",
            "--url",
            served.grpc_url,
            "--protocol",
            "grpc",
            "--repository",
            str(repo),
            "--docs",
            "6",
            "--seed",
            "1",
            "--concurrency",
            "1,2",
            "--rate",
            "4",
            *QUICK,
            "--baselines",
            "--baseline-time-limit",
            "20",
            "--output",
            str(out),
            "--label",
            "ci",
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "results.json").read_text())
    for key in (
        "machine",
        "config",
        "server",
        "repository",
        "chunking",
        "corpus",
        "points",
        "saturated",
        "baselines",
        "ratios",
        "agreement",
    ):
        assert key in result, key
    assert result["machine"]["cores"] >= 1 and result["machine"]["loadavg_start"]
    corpus_ = result["corpus"]
    assert corpus_["docs"] == 6 and corpus_["chunks"] >= 6 and 0 <= corpus_["waste"] < 1
    assert sum(b["docs"] for b in corpus_["chunk_bins"].values()) == 6
    whatif = corpus_["waste_whatif"]  # the served chunking is one of the what-if rows
    assert len(whatif) == 8 and [w["served"] for w in whatif].count(True) == 1
    assert next(w for w in whatif if w["served"])["waste"] == pytest.approx(corpus_["waste"])
    modes = [(p["mode"], p["concurrency"], p["rate"]) for p in result["points"]]
    assert modes == [("closed", 1, None), ("closed", 2, None), ("open", None, 4.0)]
    for p in result["points"]:
        assert p["docs"] > 0 and p["errors"] == 0
        for key in ("docs_per_s", "chunks_per_s", "tokens_per_s", "stable", "windows"):
            assert key in p
        cores = p["cpu_cores"]  # the local server's process tree is found by its port
        assert cores["server"] > 0 and cores["machine"] >= 0 and cores["other"] >= 0
        assert p["chunks_per_s"] >= p["docs_per_s"] > 0
        lat = p["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        for model in ("chunker", "encoder", "aggregator", "document_classifier"):
            s = p["server"][model]
            assert s["requests"] > 0 and s["queue_ms"] is not None
            assert s["compute_infer_ms"] > 0
        enc = p["server"]["encoder"]
        assert sum(int(k) * v for k, v in enc["batch_histogram"].items()) == enc["items"]
        assert set(enc["batch_infer_ms"]) == set(enc["batch_histogram"])
        assert enc["items"] >= enc["requests"]
    for name in ("ort_batched", "ort_single", "naive"):
        b = result["baselines"][name]
        assert b["docs"] > 0 and b["docs_per_s"] > 0 and b["tokens_per_s"] > 0, name
    assert result["ratios"]["served_over_ort_batched"] > 0
    assert result["ratios"]["served_over_naive"] > 0
    assert result["ratios"]["served_over_best_ort"] <= result["ratios"]["served_over_ort_batched"]
    assert result["repository"]["ort_batch"] == 1  # the portable default
    assert result["ratios"]["conc1_added_ms_per_doc"]["docs"] > 0
    # same ONNX files, same windows: the server decides exactly as in-process onnxruntime
    assert result["agreement"]["served_vs_ort_batched"]["rate"] == 1.0
    assert result["agreement"]["served_vs_naive"]["docs"] > 0

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["kind"] for r in rows] == [
        "closed",
        "closed",
        "open",
        "ort_batched",
        "ort_single",
        "naive",
    ]
    assert float(rows[0]["lat_p99_ms"]) > 0 and float(rows[0]["encoder_avg_batch"]) >= 1
    assert (out / "latency_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| c=1 |" in summary and "| naive |" in summary
    assert not (out / "results.partial.json").exists()
    (out / "summary.md").unlink()
    assert main(["bench", "--render", str(out)]) == 0 and (out / "summary.md").is_file()


def test_bench_http(tiny_server, tmp_path, capsys):
    from longdoc.cli import main

    repo, served = tiny_server
    out = tmp_path / "http"
    code = main(
        [
            "bench",
            "--url",
            served.http_url,
            "--protocol",
            "http",
            "--repository",
            str(repo),
            "--docs",
            "4",
            "--concurrency",
            "2",
            "--passes",
            "2",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "results.json").read_text())
    (point,) = result["points"]
    # fixed work: every document exactly twice, all of it on the server's counters
    assert point["fixed_work_passes"] == 2 and point["docs"] == 8
    assert point["chunks"] == 2 * result["corpus"]["chunks"]
    assert point["server"]["encoder"]["items"] == point["chunks"]
    assert point["server"]["document_classifier"]["requests"] == 8
    assert "baselines" not in result


def test_bench_reports_unreachable_server(capsys):
    from longdoc.cli import main
    from longdoc.server.probe import free_port

    code = main(
        [
            "bench",
            "--url",
            f"127.0.0.1:{free_port()}",
            "--docs",
            "2",
            "--concurrency",
            "1",
            "--no-progress",
        ]
    )
    assert code == 1
    assert "longdoc bench: error" in capsys.readouterr().err


def test_bench_mixed_workload(tiny_server, tmp_path, capsys):
    """Short documents at a fixed rate, alone and while long ones are in flight (a long
    one of 70 windows: more than the encoder's max_batch_size of 64, in a few seconds)."""
    from longdoc.cli import main

    repo, served = tiny_server
    out = tmp_path / "mixed"
    code = main(
        [
            "bench",
            "--url",
            served.grpc_url,
            "--repository",
            str(repo),
            "--docs",
            "2",
            "--concurrency",
            "",
            "--mixed",
            "4",
            "--short-windows",
            "1-2",
            "--short-docs",
            "6",
            "--long-windows",
            "70",
            "--long-inflight",
            "1",
            "--mixed-duration-s",
            "3",
            "--warmup-s",
            "0.5",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["points"] == [] and result["saturated"] is None
    (m,) = result["mixed"]
    assert m["rate"] == 4.0 and m["short_windows"] == [1, 2] and m["long_windows"] == [70]
    alone, mixed = m["short_only"], m["mixed"]
    assert alone["docs"] > 0 and alone["errors"] == 0
    # only short documents that arrived while a long one was in flight are counted
    assert mixed["docs"] > 0 and mixed["errors"] == 0
    assert mixed["docs"] + mixed["arrived_without_long"] == mixed["sent"]
    assert mixed["long"]["done"] >= 1 and mixed["long"]["errors"] == 0
    assert mixed["long"]["windows"] == 70 * mixed["long"]["done"]
    assert 0.5 < mixed["long"]["coverage"] <= 1.0
    for phase in (alone, mixed):
        lat = phase["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
        assert phase["server"]["encoder"]["requests"] > 0
    # the long documents' windows reach the encoder in the mixed phase only
    assert mixed["server"]["encoder"]["items"] > alone["server"]["encoder"]["items"]
    assert m["p99_ratio"] == pytest.approx(mixed["latency_ms"]["p99"] / alone["latency_ms"]["p99"])
    assert m["target_p99_ratio"] == 2.0 and isinstance(m["meets_target"], bool)
    summary = (out / "summary.md").read_text()
    assert "| 4/s | 1-2 | 70 x 1 |" in summary
    kinds = [r["kind"] for r in csv.DictReader((out / "results.csv").open())]
    assert kinds == ["short_only_short", "mixed_short"]
