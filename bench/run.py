"""One `longdoc bench` run: corpus, load points, mixed workload, baselines, output."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from longdoc.bench import baselines as base
from longdoc.bench.config import BenchConfig, log
from longdoc.bench.drivers import mixed_sweep, sweep
from longdoc.bench.measurement import repository_info
from longdoc.bench.report import json_default, write_results
from longdoc.bench.workload import (
    build_corpus,
    corpus_summary,
    load_chunking,
    long_documents,
    short_corpus,
    waste_whatif,
)

from longdoc.machine import machine_info


def _config(cfg: BenchConfig) -> dict:
    """The configuration as recorded: header values (keys) left out."""
    data = asdict(cfg)
    data["headers"] = {name: "(not recorded)" for name in cfg.headers}
    return data


def run_bench(cfg: BenchConfig) -> dict:
    """The whole run; writes the results when ``cfg.output`` is set and returns them."""
    machine = machine_info()
    tokenizer, chunking = load_chunking(cfg.repository)
    log(cfg, f"building the corpus: {cfg.docs} documents (seed {cfg.seed})...")
    docs = build_corpus(cfg.docs, cfg.seed, tokenizer, chunking)
    summary = corpus_summary(docs)
    summary["waste_whatif"] = waste_whatif(docs, chunking)
    log(
        cfg,
        f"corpus: {summary['docs']} docs, {summary['tokens']:,} tokens, {summary['chunks']} "
        f"chunks (median {summary['chunks_percentiles']['p50']:g}, max "
        f"{summary['chunks_percentiles']['p100']:g}); padding waste {summary['waste']:.1%}",
    )
    started = time.time()

    def partial(points: list[dict]) -> None:  # a killed or crashed run keeps its points
        if cfg.output:
            Path(cfg.output).mkdir(parents=True, exist_ok=True)
            data = {"partial": True, "config": _config(cfg), "corpus": summary, "points": points}
            text = json.dumps(data, indent=2, default=json_default)
            (Path(cfg.output) / "results.partial.json").write_text(text + "\n")

    points: list[dict] = []
    served_labels: dict[int, int] = {}
    conc1: dict[int, list[float]] = {}
    if cfg.concurrency or cfg.rates:
        points, served_labels, conc1 = asyncio.run(sweep(cfg, docs, partial))
    result: dict = {
        "label": cfg.label,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "machine": machine,
        "config": _config(cfg),
        "server": {"url": cfg.url, "protocol": cfg.protocol, "model": cfg.model},
        "repository": repository_info(cfg.repository),
        "chunking": chunking.to_dict(),
        "corpus": summary,
        "points": points,
    }
    closed = [p for p in points if p["mode"] == "closed" and p["docs"]]
    best = max(closed, key=lambda p: p["tokens_per_s"]) if closed else None
    result["saturated"] = (
        {k: best[k] for k in ("concurrency", "docs_per_s", "chunks_per_s", "tokens_per_s")}
        if best
        else None
    )
    if cfg.mixed_rates:
        result["mixed"] = run_mixed(cfg, tokenizer, chunking)
    # Further measurements of the same run go here, each as result[<name>] with its
    # renderer in report.SECTIONS.
    texts = [d.text for d in docs]
    if cfg.ceiling:
        from longdoc.bench.ceiling import run_ceiling

        log(cfg, "ceiling: onnxruntime FP32/INT8 GEMM rates at the encoder's shapes...")
        result["ceiling"] = run_ceiling(cfg.repository, docs, result["saturated"], cfg.ort_threads)
    if cfg.peers:
        from longdoc.bench.peers import run_peers, served_summary

        result["peers"] = run_peers(
            cfg.repository,
            texts,
            docs,
            tuple(cfg.peers),
            cfg.baseline_time_limit_s,
            cfg.checkpoint,
            cfg.preset,
            cfg.head,
            log=lambda m: log(cfg, m),
            served_labels=served_labels,
            served_url=cfg.url,
        )
        result["peers"]["served"] = served_summary(result)
    if cfg.baselines:
        if not cfg.repository:
            raise ValueError("--baselines needs --repository DIR (the served ONNX files)")
        result["baselines"] = base.run_baselines(cfg, texts, docs, log=lambda m: log(cfg, m))
        result["ratios"] = base.ratios(result, conc1)
        labels = {name: b.pop("labels") for name, b in result["baselines"].items()}
        result["agreement"] = {
            f"served_vs_{name}": base.agreement(served_labels, lab) for name, lab in labels.items()
        }
    if cfg.reference_repository:
        log(cfg, f"reference decisions: in-process onnxruntime on {cfg.reference_repository}")
        ref = base.reference_labels(cfg.reference_repository, texts, cfg.ort_threads)
        agree = base.agreement(served_labels, ref)
        result.setdefault("agreement", {})["served_vs_reference"] = agree
        result["agreement"]["served_vs_reference"]["repository"] = repository_info(
            cfg.reference_repository
        )
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["seconds"] = round(time.time() - started, 1)
    if cfg.output:
        write_results(result, Path(cfg.output))
        (Path(cfg.output) / "results.partial.json").unlink(missing_ok=True)
        files = ", ".join(sorted(p.name for p in Path(cfg.output).iterdir() if p.is_file()))
        log(cfg, f"wrote {cfg.output}: {files}")
    return result


def run_mixed(cfg: BenchConfig, tokenizer, chunking) -> list[dict]:
    """The mixed workload's points (``drivers.measure_mixed``) with its two corpora."""
    shorts = short_corpus(cfg.short_docs, cfg.seed, tokenizer, chunking, cfg.short_windows)
    longs = long_documents(
        max(2, cfg.long_inflight), cfg.long_windows, cfg.seed, tokenizer, chunking
    )
    log(
        cfg,
        f"mixed workload: {len(shorts)} short documents ({cfg.short_windows[0]}-"
        f"{cfg.short_windows[1]} windows), {len(longs)} long ones of "
        f"{longs[0].num_chunks} windows, {cfg.long_inflight} in flight",
    )
    return asyncio.run(mixed_sweep(cfg, shorts, longs))
