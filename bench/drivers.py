"""How `longdoc bench` loads the server: closed loop, open loop, fixed work, mixed.

* ``Connection``: one aio client (``longdoc.client.transport``, shared with the client
  library) with every document's request prebuilt; ``infer`` gives one ``Sample``;
* ``measure_point``: a closed loop (``concurrency`` documents in flight, each worker sends
  the next as soon as its previous one returns) or an open loop (Poisson arrivals at
  ``rate`` documents/s, latency from the scheduled arrival: no coordinated omission), to
  stability or the point's time limit; ``measure_pass``: fixed work (the corpus K times);
* ``measure_mixed``: fairness to short documents: short documents arriving at a fixed rate
  (open loop), first alone, then while long documents are in flight (closed loop of
  ``long_inflight``), the same arrival sequence both times;
* ``sweep``: every point of a run, measured again on a busy machine when asked.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
from longdoc.bench.config import BenchConfig, log, progress
from longdoc.bench.measurement import (
    CpuMonitor,
    ModelCounters,
    ServerStatistics,
    stats_delta,
    summarize_models,
)
from longdoc.bench.stats import is_stable, latency_summary
from longdoc.bench.workload import BenchDoc
from longdoc.client import transport

from longdoc import contract

# what the benchmark asks for (as the client library does)
OUTPUTS = (contract.LOGITS, contract.NUM_CHUNKS, contract.CHUNK_LOGITS, contract.CHUNK_SPANS)


@dataclass
class Sample:
    doc: int
    start: float  # when the request was due (open loop: scheduled arrival)
    end: float
    error: str | None = None
    label: int | None = None
    tag: str = ""  # mixed workload: "short" or "long"
    during_long: bool = False  # mixed workload: a long document was in flight at arrival

    @property
    def latency(self) -> float:
        return self.end - self.start


class Connection:
    """One aio client (gRPC or HTTP) with every document's request prebuilt."""

    def __init__(self, cfg: BenchConfig, docs: list[BenchDoc], max_inflight: int) -> None:
        self.cfg = cfg
        self.docs = docs
        self.protocol = transport.check_protocol(cfg.protocol)
        self.headers = transport.wire_headers(cfg.headers, cfg.protocol) or None
        self.client = transport.aio_client(
            cfg.protocol, cfg.url, cfg.request_timeout_s, max_inflight
        )
        self.module = transport.aio_module(cfg.protocol)
        self.inputs = [[transport.text_input(self.module, doc.data)] for doc in docs]
        self.outputs = None
        self.stats = ServerStatistics(self.client, cfg.protocol, self.headers)

    async def prepare(self) -> None:
        """Check the model is there and build the requested outputs (as the client does:
        the classification extension's ``class_count`` for PROBABILITIES)."""
        deadline = time.perf_counter() + self.cfg.request_timeout_s
        attempt = 0
        retries = self.cfg.retries or 0  # none unless asked: an unreachable server is
        while True:  # reported at once, not after the 600 s --timeout
            try:
                meta = await self.client.get_model_metadata(self.cfg.model, headers=self.headers)
                break
            except Exception as exc:  # tritonclient's own exception types
                capped = attempt >= retries
                late = time.perf_counter() + 0.5 >= deadline
                if capped or late or not transport.is_retryable(exc, True):
                    message = transport.error_text(exc)
                    raise RuntimeError(f"{self.cfg.protocol}://{self.cfg.url}: {message}") from exc
                attempt += 1
                await asyncio.sleep(min(4.0, 0.5 * 2 ** min(attempt, 3)))
        shapes = transport.output_shapes(transport.metadata_dict(meta))
        if contract.LOGITS not in shapes:
            raise RuntimeError(f"model {self.cfg.model} has no {contract.LOGITS} output")
        self.num_labels = shapes[contract.LOGITS][-1]
        self.outputs = transport.requested_outputs(self.module, shapes, OUTPUTS)

    async def infer(self, index: int, start: float) -> Sample:
        sample = Sample(index, start, start)
        try:
            response = await transport.infer(
                self.client,
                self.protocol,
                self.cfg.model,
                self.inputs[index],
                self.outputs,
                self.headers,
                self.cfg.request_timeout_s,
            )
            sample.label = int(np.argmax(response.as_numpy(contract.LOGITS)))
        except Exception as exc:  # counted per request
            sample.error = transport.error_text(exc)[:300]
        sample.end = time.perf_counter()
        return sample

    async def close(self) -> None:
        await self.client.close()


# ---------------------------------------------------------------------------------------
# one load point
# ---------------------------------------------------------------------------------------


@dataclass
class Window:
    start: float
    end: float
    stats_start: dict[str, ModelCounters]
    stats_end: dict[str, ModelCounters]
    samples: list[Sample]
    chunks: int = 0
    cpu_start: dict | None = None
    cpu_end: dict | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


def _done_in(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.end < end]


async def measure_point(
    conn: Connection,
    mode: str,
    level: float,
    cfg: BenchConfig,
    bar=None,
    cpu: CpuMonitor | None = None,
) -> tuple[dict, list[Sample]]:
    """Run one closed-loop (``level`` = concurrency) or open-loop (``level`` = docs/s)
    point to stability or its time limit; returns the point's record and all samples."""
    docs = conn.docs
    samples: list[Sample] = []
    stop = asyncio.Event()
    started = time.perf_counter()
    inflight: set[asyncio.Task] = set()

    def record(sample: Sample) -> None:
        samples.append(sample)
        if bar is not None:
            bar.update(1)

    if mode == "closed" and cfg.passes:
        return await measure_pass(conn, int(level), cfg, bar, cpu)
    if mode == "closed":
        counter = iter(range(10**12))

        async def worker() -> None:
            while not stop.is_set():
                index = next(counter) % len(docs)
                record(await conn.infer(index, time.perf_counter()))

        drivers = [asyncio.create_task(worker()) for _ in range(int(level))]
    else:
        rng = random.Random(cfg.seed * 7919 + int(level * 1000))

        async def one(index: int, due: float) -> None:
            record(await conn.infer(index, due))

        async def arrivals() -> None:
            due = time.perf_counter()
            k = 0
            while not stop.is_set():
                due += rng.expovariate(level)
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop.is_set():
                    break
                task = asyncio.create_task(one(k % len(docs), due))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                k += 1

        drivers = [asyncio.create_task(arrivals())]

    try:
        await asyncio.sleep(cfg.warmup_s)
        windows: list[Window] = []
        w_start = time.perf_counter()
        w_stats = await conn.stats.read()
        w_cpu = cpu.snapshot() if cpu else None
        stable = False
        while True:
            await asyncio.sleep(cfg.window_s)
            while (
                len(_done_in(samples, w_start, math.inf)) < cfg.min_window_docs
                and time.perf_counter() - started < cfg.max_point_s
            ):
                await asyncio.sleep(0.2)
            w_end = time.perf_counter()
            end_stats = await conn.stats.read()
            end_cpu = cpu.snapshot() if cpu else None
            done = _done_in(samples, w_start, w_end)
            window = Window(w_start, w_end, w_stats, end_stats, done, 0, w_cpu, end_cpu)
            window.chunks = sum(docs[s.doc].num_chunks for s in done if s.error is None)
            windows.append(window)
            recent = [w.chunks_per_s for w in windows[-cfg.stable_windows :]]
            if bar is not None:
                bar.set_postfix_str(
                    f"window {len(windows)}: {window.chunks_per_s:.1f} chunks/s", refresh=False
                )
            if len(windows) >= cfg.stable_windows and is_stable(recent, cfg.stability):
                stable = True
                break
            if time.perf_counter() - started >= cfg.max_point_s:
                break
            w_start, w_stats, w_cpu = w_end, end_stats, end_cpu
    finally:
        stop.set()
        drain = cfg.request_timeout_s if mode == "closed" else min(60.0, cfg.request_timeout_s)
        _, pending = await asyncio.wait(drivers + list(inflight), timeout=drain)
        for task in pending:
            task.cancel()
    chosen = windows[-cfg.stable_windows :] if stable else windows
    point = summarize_point(mode, level, chosen, windows, stable, docs, started)
    return point, samples


async def measure_pass(
    conn: Connection, concurrency: int, cfg: BenchConfig, bar=None, cpu: CpuMonitor | None = None
) -> tuple[dict, list[Sample]]:
    """Fixed work: every corpus document exactly ``cfg.passes`` times, in order, with
    ``concurrency`` in flight; throughput is the work over the wall time from the first
    request to the last answer (the ramp-down at the end included). Same documents as the
    in-process baselines: the comparison that does not depend on which documents happened to
    finish inside a window. Warm-up: the first ``concurrency`` documents, not counted."""
    docs = conn.docs
    warm = list(range(min(concurrency, len(docs))))
    await asyncio.gather(*(conn.infer(i, time.perf_counter()) for i in warm))
    order = iter([i for _ in range(cfg.passes) for i in range(len(docs))])
    samples: list[Sample] = []

    async def worker() -> None:
        for index in order:
            samples.append(await conn.infer(index, time.perf_counter()))
            if bar is not None:
                bar.update(1)

    (stats_start, _), cpu_start = await conn.stats.settled(), cpu.snapshot() if cpu else None
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ended = time.perf_counter()
    cpu_end = cpu.snapshot() if cpu else None
    stats_end, _ = await conn.stats.settled()
    window = Window(started, ended + 1e-9, stats_start, stats_end, samples, 0, cpu_start, cpu_end)
    window.chunks = sum(docs[s.doc].num_chunks for s in samples if s.error is None)
    point = summarize_point("closed", concurrency, [window], [window], True, docs, started)
    point["fixed_work_passes"] = cfg.passes
    return point, samples


def summarize_point(
    mode: str,
    level: float,
    chosen: list[Window],
    windows: list[Window],
    stable: bool,
    docs: list[BenchDoc],
    started: float,
) -> dict:
    start, end = chosen[0].start, chosen[-1].end
    seconds = end - start
    done = [s for w in chosen for s in w.samples]
    ok = [s for s in done if s.error is None]
    errors: dict[str, int] = {}
    for s in done:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    chunks = sum(docs[s.doc].num_chunks for s in ok)
    tokens = sum(docs[s.doc].num_tokens for s in ok)
    computed = sum(docs[s.doc].computed_tokens for s in ok)
    delta = stats_delta(chosen[0].stats_start, chosen[-1].stats_end)
    return {
        "mode": mode,
        "concurrency": int(level) if mode == "closed" else None,
        "rate": float(level) if mode == "open" else None,
        "stable": stable,
        "windows": len(windows),
        "windows_used": len(chosen),
        "window_chunks_per_s": [round(w.chunks_per_s, 3) for w in windows],
        "elapsed_s": round(end - started, 2),
        "seconds": seconds,
        "docs": len(ok),
        "errors": len(done) - len(ok),
        "error_messages": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "chunks": chunks,
        "tokens": tokens,
        "docs_per_s": len(ok) / seconds,
        "chunks_per_s": chunks / seconds,
        "tokens_per_s": tokens / seconds,
        "padded_tokens_per_s": computed / seconds,
        "latency_ms": latency_summary([s.latency for s in ok]),
        "server": summarize_models(delta, seconds),
        "cpu_cores": CpuMonitor.usage(chosen[0].cpu_start, chosen[-1].cpu_end, seconds),
        "loadavg_1m_end": os.getloadavg()[0],
    }


async def sweep(
    cfg: BenchConfig, docs: list[BenchDoc], on_point=None
) -> tuple[list[dict], dict[int, int], dict]:
    """All load points against the server; returns points, served decisions per document
    and the concurrency-1 latencies per document. ``on_point(points)`` after each point."""
    max_inflight = max(cfg.concurrency or [1])
    conn = Connection(cfg, docs, max_inflight)
    cpu = CpuMonitor(cfg.url)
    points: list[dict] = []
    labels: dict[int, int] = {}
    conc1: dict[int, list[float]] = {}
    try:
        await conn.prepare()
        plan = [("closed", float(c)) for c in cfg.concurrency]
        plan += [("open", float(r)) for r in cfg.rates]
        for mode, level in plan:
            if not await conn.stats.wait_idle(cfg.idle_timeout_s):
                log(cfg, "warning: server still busy after the idle timeout")
            name = f"concurrency {int(level)}" if mode == "closed" else f"rate {level:g}/s"
            for attempt in range(1 + (cfg.remeasure if cfg.max_other_cores is not None else 0)):
                if attempt:
                    quiet = await asyncio.to_thread(
                        cpu.wait_quiet,
                        cfg.max_other_cores,
                        cfg.quiet_timeout_s,
                        lambda m: log(cfg, m),
                    )
                    if not quiet:
                        log(cfg, "the machine did not get quiet: keeping the last measurement")
                        break
                    log(cfg, f"{name}: measuring again (attempt {attempt + 1})")
                    await conn.stats.wait_idle(cfg.idle_timeout_s)
                bar = progress(cfg, name)
                try:
                    point, samples = await measure_point(conn, mode, level, cfg, bar, cpu)
                finally:
                    bar.close()
                point["attempts"] = attempt + 1
                if not _contaminated(point, cfg):
                    break
                log(cfg, f"{name}: other processes used {point['cpu_cores']['other']:.2f} cores")
            point["contaminated"] = _contaminated(point, cfg)
            points.append(point)
            if on_point is not None:
                on_point(points)
            for s in samples:
                if s.error is None and s.label is not None:
                    labels.setdefault(s.doc, s.label)
            if mode == "closed" and int(level) == 1:
                for s in samples:
                    if s.error is None:
                        conc1.setdefault(s.doc, []).append(s.latency)
            lat = point["latency_ms"]
            cores = point["cpu_cores"] or {}
            other = f", other processes {cores['other']:.2f} cores" if cores else ""
            log(
                cfg,
                f"{name}: {point['docs_per_s']:.2f} docs/s, {point['chunks_per_s']:.1f} "
                f"chunks/s, p50 {lat['p50'] or 0:.0f} ms, p99 {lat['p99'] or 0:.0f} ms, "
                f"errors {point['errors']}{other}{'' if point['stable'] else ' (not stable)'}",
            )
        missing = [d.index for d in docs if d.index not in labels]
        if missing and (cfg.baselines or cfg.reference_repository):
            # every document's served decision, for the agreement checks
            gate = asyncio.Semaphore(max(1, min(8, max_inflight)))

            async def one(index: int) -> Sample:
                async with gate:
                    return await conn.infer(index, time.perf_counter())

            for s in await asyncio.gather(*(one(i) for i in missing)):
                if s.error is None:
                    labels[s.doc] = s.label
    finally:
        await conn.close()
    return points, labels, conc1


def _contaminated(point: dict, cfg: BenchConfig) -> bool:
    cores = point.get("cpu_cores") or {}
    return cfg.max_other_cores is not None and cores.get("other", 0) > cfg.max_other_cores


# ---------------------------------------------------------------------------------------
# mixed workload: fairness to short documents
# ---------------------------------------------------------------------------------------

TARGET_P99_RATIO = 2.0  # issue 11: short p99 while a long document runs <= 2x short-only p99


async def _short_arrivals(
    conn: Connection, rate: float, seconds: float, seed: int, long_inflight=None
) -> list[Sample]:
    """Poisson arrivals of the short documents (in order, cycling) at ``rate`` per second
    for ``seconds``; latency from the scheduled arrival. The arrival times and documents
    depend only on ``seed`` and ``rate``: two phases see the same sequence.
    ``long_inflight()``: how many long documents are in flight (recorded per arrival)."""
    rng = random.Random(seed * 7919 + int(rate * 1000) + 1)
    tasks: list[asyncio.Task] = []
    samples: list[Sample] = []

    async def one(index: int, due: float, during_long: bool) -> None:
        sample = await conn.infer(index, due)
        sample.tag, sample.during_long = "short", during_long
        samples.append(sample)

    start = time.perf_counter()
    due, k = start, 0
    while True:
        due += rng.expovariate(rate)
        if due - start >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        during = bool(long_inflight and long_inflight() > 0)
        tasks.append(asyncio.create_task(one(k % len(conn.docs), due, during)))
        k += 1
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=conn.cfg.request_timeout_s)
        for task in pending:  # past the request timeout: counted as not answered
            task.cancel()
    return samples


def _short_summary(samples: list[Sample], delta: dict[str, ModelCounters], seconds: float):
    ok = [s for s in samples if s.error is None]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    return {
        "sent": len(samples),
        "docs": len(ok),
        "errors": len(samples) - len(ok),
        "error_messages": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "latency_ms": latency_summary([s.latency for s in ok]),
        "server": summarize_models(delta, seconds),
    }


async def measure_mixed(short: Connection, long: Connection, rate: float, cfg: BenchConfig):
    """One mixed point at ``rate`` short documents/s.

    1. short only: after ``warmup_s`` of the same arrivals (not counted), arrivals for
       ``mixed_duration_s``; latency of each from its scheduled arrival;
    2. mixed: ``long_inflight`` workers keep long documents in flight (each sends the next
       as soon as its last one returns) while the same short arrival sequence runs again;
       only short documents that arrived while a long one was in flight count.

    Returns both latency summaries, the ratios (mixed over short-only, p50 and p99) against
    the target, the long documents' figures and Triton's statistics of each phase."""
    seconds = cfg.mixed_duration_s
    if cfg.warmup_s > 0:
        await _short_arrivals(short, rate, cfg.warmup_s, cfg.seed + 1)
    await short.stats.wait_idle(cfg.idle_timeout_s)

    before, _ = await short.stats.settled()
    t0 = time.perf_counter()
    alone = await _short_arrivals(short, rate, seconds, cfg.seed)
    t1 = time.perf_counter()
    after, _ = await short.stats.settled()
    result: dict = {
        "rate": rate,
        "duration_s": seconds,
        "short_windows": list(cfg.short_windows),
        "long_windows": sorted({d.num_chunks for d in long.docs}),
        "long_inflight": cfg.long_inflight,
        "short_only": _short_summary(alone, stats_delta(before, after), t1 - t0),
    }
    await short.stats.wait_idle(cfg.idle_timeout_s)

    inflight = 0
    busy_since: float | None = None
    busy_s = 0.0
    stop = asyncio.Event()
    long_samples: list[Sample] = []
    counter = iter(range(10**12))

    async def long_worker() -> None:
        nonlocal inflight, busy_since, busy_s
        while not stop.is_set():
            index = next(counter) % len(long.docs)
            if inflight == 0:
                busy_since = time.perf_counter()
            inflight += 1
            try:
                sample = await long.infer(index, time.perf_counter())
            finally:
                inflight -= 1
                if inflight == 0 and busy_since is not None:
                    busy_s += time.perf_counter() - busy_since
                    busy_since = None
            sample.tag = "long"
            long_samples.append(sample)
            if sample.error is not None:  # refused: do not hammer the server with it
                await asyncio.sleep(1.0)

    before, _ = await short.stats.settled()
    t0 = time.perf_counter()
    workers = [asyncio.create_task(long_worker()) for _ in range(max(1, cfg.long_inflight))]
    await asyncio.sleep(0.05)  # the first long documents are on their way
    mixed = await _short_arrivals(short, rate, seconds, cfg.seed, lambda: inflight)
    t1 = time.perf_counter()
    covered = busy_s + (t1 - busy_since if busy_since is not None else 0.0)
    stop.set()
    _, pending = await asyncio.wait(workers, timeout=cfg.request_timeout_s)
    for task in pending:
        task.cancel()
    after, _ = await short.stats.settled()
    counted = [s for s in mixed if s.during_long]
    mixed_summary = _short_summary(counted, stats_delta(before, after), t1 - t0)
    mixed_summary["arrived_without_long"] = len(mixed) - len(counted)
    long_ok = [s for s in long_samples if s.error is None]
    long_errors: dict[str, int] = {}
    for s in long_samples:
        if s.error is not None:
            long_errors[s.error] = long_errors.get(s.error, 0) + 1
    mixed_summary["long"] = {
        "done": len(long_ok),
        "errors": len(long_samples) - len(long_ok),
        "error_messages": dict(sorted(long_errors.items(), key=lambda kv: -kv[1])[:3]),
        "latency_ms": latency_summary([s.latency for s in long_ok]),
        "windows": sum(long.docs[s.doc].num_chunks for s in long_ok),
        "coverage": covered / (t1 - t0) if t1 > t0 else None,  # share of the phase
    }
    result["mixed"] = mixed_summary
    a, m = result["short_only"]["latency_ms"], mixed_summary["latency_ms"]
    for q in ("p50", "p99"):
        ok = a.get(q) and m.get(q) is not None
        result[f"{q}_ratio"] = m[q] / a[q] if ok else None
    result["target_p99_ratio"] = TARGET_P99_RATIO
    ratio = result["p99_ratio"]
    result["meets_target"] = None if ratio is None else ratio <= TARGET_P99_RATIO
    return result


async def mixed_sweep(cfg: BenchConfig, shorts: list[BenchDoc], longs: list[BenchDoc]):
    """Every ``cfg.mixed_rates`` point; long and short documents on separate connections
    (one client each, as two independent users would be)."""
    short = Connection(cfg, shorts, 64)
    long = Connection(cfg, longs, max(1, cfg.long_inflight))
    points = []
    try:
        await short.prepare()
        await long.prepare()
        for rate in cfg.mixed_rates:
            log(cfg, f"mixed {rate:g}/s: short documents alone, then with long ones in flight")
            point = await measure_mixed(short, long, rate, cfg)
            points.append(point)
            a, m = point["short_only"]["latency_ms"], point["mixed"]["latency_ms"]
            log(
                cfg,
                f"mixed {rate:g}/s: short p50/p99 {a['p50'] or 0:.0f}/{a['p99'] or 0:.0f} ms "
                f"alone, {m['p50'] or 0:.0f}/{m['p99'] or 0:.0f} ms with "
                f"{point['long_windows']}-window documents in flight "
                f"({point['mixed']['docs']} counted, long done {point['mixed']['long']['done']}"
                f", errors {point['mixed']['long']['errors']})",
            )
    finally:
        await short.close()
        await long.close()
    return points
