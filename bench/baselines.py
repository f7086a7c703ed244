"""The baselines `longdoc bench --baselines` runs in the same process, on the same documents.

Each computes its logits through the classifier interface (``longdoc.results.Classifier``):

* ``ort_batched`` (the ceiling for the server): ``OnnxPipeline.classify`` over the
  served repository's own ONNX files, tokenizer and chunking: windows of several documents
  with the same padded length share one onnxruntime call of at most the encoder's
  ``max_batch_size`` windows, as Triton's dynamic batcher does, with no server in between.
  Documents go in groups of the sweep's highest concurrency (the most documents the server
  ever has in flight).
* ``ort_single``: the same pipeline one document at a time (``classify([text])``): the in-process
  latency of each document, to set against the server's at concurrency 1.
* ``naive``: the loop people write first: PyTorch eager, one window at a time, every window
  padded to ``max_length`` (no buckets, no batching), same windows and weights: the
  reference classifier with ``batch_size=1, pad_to_max_length=True``.

Each runs until the corpus is done or its time limit passes (checked between documents or
groups), and reports documents, windows and document tokens per second. ``ratios`` and
``agreement`` set the served figures and decisions against them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from longdoc.bench.measurement import CpuMonitor, encoder_max_batch
from longdoc.bench.stats import latency_summary

from longdoc import contract


def _rates(done: list, seconds: float) -> dict:
    """Throughput over the corpus documents ``done`` (BenchDoc) in ``seconds``."""
    docs = len(done)
    chunks = sum(d.num_chunks for d in done)
    tokens = sum(d.num_tokens for d in done)
    return {
        "docs": docs,
        "chunks": chunks,
        "tokens": tokens,
        "seconds": seconds,
        "docs_per_s": docs / seconds if seconds > 0 else 0.0,
        "chunks_per_s": chunks / seconds if seconds > 0 else 0.0,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


def ort_batched(
    repository: str | Path,
    texts: list[str],
    docs,
    threads: int | None,
    group: int,
    time_limit_s: float,
    max_batch: int | None = None,
) -> dict:
    from longdoc.runtime import OnnxPipeline

    max_batch = max_batch or encoder_max_batch(repository)
    pipeline = OnnxPipeline(repository, threads=threads, max_batch=max_batch)
    pipeline.classify(texts[: min(2, len(texts))])  # warm-up: sessions, arenas
    labels: dict[int, int] = {}
    started = time.perf_counter()
    done = 0
    while done < len(texts) and time.perf_counter() - started < time_limit_s:
        batch = texts[done : done + group]
        for offset, result in enumerate(pipeline.classify(batch)):
            labels[done + offset] = int(np.argmax(result.logits))
        done += len(batch)
    seconds = time.perf_counter() - started
    out = _rates(docs[:done], seconds)
    return out | {
        "description": f"in-process onnxruntime, classify, groups of {group} docs, "
        f"max {pipeline.max_batch} windows per call, threads {threads or 'all'}",
        "complete": done == len(texts),
        "labels": labels,
    }


def ort_single(
    repository: str | Path,
    texts: list[str],
    docs,
    threads: int | None,
    time_limit_s: float,
    max_batch: int | None = None,
) -> dict:
    from longdoc.runtime import OnnxPipeline

    max_batch = max_batch or encoder_max_batch(repository)
    pipeline = OnnxPipeline(repository, threads=threads, max_batch=max_batch)
    pipeline.classify(texts[:1])
    latencies: dict[str, float] = {}
    labels: dict[int, int] = {}
    started = time.perf_counter()
    for index, text in enumerate(texts):
        if time.perf_counter() - started >= time_limit_s:
            break
        t0 = time.perf_counter()
        result = pipeline.classify([text])[0]
        latencies[str(index)] = time.perf_counter() - t0
        labels[index] = int(np.argmax(result.logits))
    seconds = time.perf_counter() - started
    done = len(latencies)
    out = _rates(docs[:done], seconds)
    return out | {
        "description": "in-process onnxruntime, classify([text]), one document at a time, max "
        f"{pipeline.max_batch} windows per call",
        "complete": done == len(texts),
        "latency_ms": latency_summary(list(latencies.values())),
        "latency_by_doc": latencies,
        "labels": labels,
    }


def load_reference_model(
    repository: str | Path,
    checkpoint: str | None = None,
    preset: str | None = None,
    head: str | None = None,
    random_head: bool | None = None,
):
    """The PyTorch model behind the repository: ``checkpoint``/``preset`` when given, else
    the source recorded in its ``export_report.json``; labels and chunking from the
    repository."""
    from longdoc.checkpoint import HEAD_JSON, load_checkpoint, load_preset
    from longdoc.chunking import ChunkingConfig
    from longdoc.runtime import export_metadata, read_labels

    repo = Path(repository)
    chunking = ChunkingConfig.load(repo / contract.CHUNKER / "1" / contract.CHUNKING_FILE)
    labels = read_labels(repo / contract.ENSEMBLE / contract.LABELS_FILE)
    report = export_metadata(repo)
    head = head or report.get("head")
    source = report.get("source", "")
    if not checkpoint and not preset:
        if source.startswith("preset:"):
            preset = source.split(":", 1)[1]
        elif source and Path(source).is_dir():
            checkpoint = source
        else:
            raise ValueError(
                f"cannot tell which PyTorch model {repo} was exported from (source "
                f"{source!r}): give --checkpoint DIR or --preset NAME"
            )
    if preset:
        return load_preset(preset, head or "logits-mean", num_labels=len(labels), chunking=chunking)
    if random_head is None:
        random_head = (
            head in ("mean-pool", "transformer") and not (Path(checkpoint) / HEAD_JSON).is_file()
        )
    return load_checkpoint(
        checkpoint, head, random_head=random_head, num_labels=len(labels), chunking=chunking
    )


def naive(model, texts: list[str], docs, time_limit_s: float) -> dict:
    """PyTorch eager, one window at a time, each padded to ``max_length``."""
    import torch

    from longdoc.reference import ReferenceClassifier

    classifier = ReferenceClassifier(model, batch_size=1, pad_to_max_length=True)
    classifier.classify(texts[:1])  # warm-up
    latencies: list[float] = []
    labels: dict[int, int] = {}
    started = time.perf_counter()
    for index, text in enumerate(texts):
        if time.perf_counter() - started >= time_limit_s:
            break
        t0 = time.perf_counter()
        labels[index] = classifier.classify([text])[0].index
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    done = len(latencies)
    out = _rates(docs[:done], seconds)
    return out | {
        "description": f"PyTorch eager ({model.source}), one window at a time, every window "
        f"padded to {model.chunking.max_length}, {torch.get_num_threads()} threads",
        "complete": done == len(texts),
        "latency_ms": latency_summary(latencies),
        "labels": labels,
    }


def _measured(call: Callable[[], dict], cfg=None, log: Callable[[str], None] = print) -> dict:
    """``call()``'s result plus the cores used meanwhile, by this process and by others;
    with ``cfg.max_other_cores``, measured again (after waiting for a quiet machine) while
    other processes used more than that."""
    monitor = CpuMonitor()
    threshold = getattr(cfg, "max_other_cores", None)
    attempts = 1 + (cfg.remeasure if threshold is not None else 0)
    for attempt in range(attempts):
        if attempt:
            if not monitor.wait_quiet(threshold, cfg.quiet_timeout_s, log):
                break
            log(f"measuring again (attempt {attempt + 1})")
        start, t0 = monitor.snapshot(), time.perf_counter()
        result = call()
        usage = CpuMonitor.usage(start, monitor.snapshot(), time.perf_counter() - t0)
        if usage:
            usage.pop("server", None)
        result |= {"cpu_cores": usage, "attempts": attempt + 1}
        contaminated = threshold is not None and usage is not None and usage["other"] > threshold
        result["contaminated"] = contaminated
        if not contaminated:
            break
        log(f"other processes used {usage['other']:.2f} cores meanwhile")
    return result


def run_baselines(cfg, texts: list[str], docs, log: Callable[[str], None] = print) -> dict:
    """The baselines ``cfg.baselines`` asks for ("ort", "naive"), in that order."""
    out: dict = {}
    group = max(cfg.concurrency or [16])
    limit = cfg.baseline_time_limit_s
    if "ort" in cfg.baselines:
        log(f"baseline ort_batched: {len(texts)} docs in groups of {group}...")
        out["ort_batched"] = _measured(
            lambda: ort_batched(
                cfg.repository, texts, docs, cfg.ort_threads, group, limit, cfg.ort_max_batch
            ),
            cfg,
            log,
        )
        log(_line("ort_batched", out["ort_batched"]))
        log("baseline ort_single: one document at a time...")
        out["ort_single"] = _measured(
            lambda: ort_single(
                cfg.repository, texts, docs, cfg.ort_threads, limit, cfg.ort_max_batch
            ),
            cfg,
            log,
        )
        log(_line("ort_single", out["ort_single"]))
    if "naive" in cfg.baselines:
        log("baseline naive: PyTorch eager, one window at a time, padded to max_length...")
        model = load_reference_model(
            cfg.repository, cfg.checkpoint, cfg.preset, cfg.head, cfg.random_head
        )
        out["naive"] = _measured(lambda: naive(model, texts, docs, limit), cfg, log)
        log(_line("naive", out["naive"]))
    return out


def _line(name: str, b: dict) -> str:
    more = "" if b["complete"] else " (time limit: part of the corpus)"
    if b.get("cpu_cores"):
        more += f", other processes {b['cpu_cores']['other']:.2f} cores"
    return (
        f"{name}: {b['docs']} docs in {b['seconds']:.1f} s: {b['docs_per_s']:.2f} docs/s, "
        f"{b['chunks_per_s']:.1f} chunks/s{more}"
    )


def reference_labels(repository: str | Path, texts: list[str], threads: int | None) -> dict:
    """Decisions of another repository's ONNX files (e.g. FP32 for an INT8 server)."""
    from longdoc.runtime import OnnxPipeline

    pipeline = OnnxPipeline(repository, threads=threads, max_batch=encoder_max_batch(repository))
    labels = {}
    for start in range(0, len(texts), 16):
        for offset, result in enumerate(pipeline.classify(texts[start : start + 16])):
            labels[start + offset] = int(np.argmax(result.logits))
    return labels


def ratios(result: dict, conc1: dict[int, list[float]]) -> dict:
    """served / baseline throughput (tokens/s: the same work whatever the document mix),
    and what the server adds per document at concurrency 1 over in-process onnxruntime."""
    out: dict = {}
    best = result.get("saturated")
    b = result["baselines"]
    for name in ("ort_batched", "naive"):
        if best and name in b and b[name].get("tokens_per_s"):
            out[f"served_over_{name}"] = best["tokens_per_s"] / b[name]["tokens_per_s"]
    ort = [
        b[n]["tokens_per_s"]
        for n in ("ort_batched", "ort_single")
        if b.get(n, {}).get("tokens_per_s")
    ]
    if best and ort:  # the ceiling: whichever in-process configuration was faster here
        out["served_over_best_ort"] = best["tokens_per_s"] / max(ort)
    single = b.get("ort_single", {}).get("latency_by_doc")
    if single and conc1:
        paired = [np.mean(conc1[i]) - single[str(i)] for i in sorted(conc1) if str(i) in single]
        if paired:
            out["conc1_added_ms_per_doc"] = {
                "docs": len(paired),
                "mean": float(np.mean(paired) * 1000),
                "median": float(np.median(paired) * 1000),
            }
    return out


def agreement(a: dict[int, int], b: dict[int, int]) -> dict:
    common = sorted(set(a) & set(b))
    same = sum(a[i] == b[i] for i in common)
    return {"docs": len(common), "agree": same, "rate": same / len(common) if common else None}
