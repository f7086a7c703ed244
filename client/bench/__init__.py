"""`longdoc bench`: load generation and measurement against a running `document_classifier`.

What one run does (``run_bench``):

1. builds the benchmark corpus (``longdoc.corpus.benchmark_corpus``: real text, lengths in
   tokens from a documented distribution, deterministic for a seed) and chunks every
   document with the served chunking (tokens, windows, padded-token waste);
2. for every load point, a closed loop (``concurrency`` documents in flight, each worker
   sends the next document as soon as its previous one returns) or an open loop (Poisson
   arrivals at ``rate`` documents/s, latency counted from the scheduled arrival, so a slow
   server cannot hide its queue: no coordinated omission): a warm-up, then measurement
   windows until the last ``stable_windows`` windows agree on chunks/s within
   ``stability`` (perf_analyzer's rule) or the point's time limit passes;
3. per point: documents/s, chunks/s, tokens/s, latency mean/p50/p90/p95/p99/max, errors,
   and the server side from Triton's statistics API over the same windows: per composing
   model queue vs compute time per request, executions, average batch, busy fraction and
   the encoder's batch-size histogram;
4. optionally the baselines in the same process (``client.baselines``): in-process
   onnxruntime over the same ONNX files, and the naive PyTorch loop; ratios and
   decision agreement;
5. writes ``results.json``, ``results.csv`` and ``latency_throughput.png``.

Throughput counts finished documents: a document's chunks and tokens count in the window
in which its answer arrives. Chunks/s is the stability metric because documents differ in
size by 100x; windows are extended until at least ``min_window_docs`` documents finish.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from longdoc.client.stats import (
    ModelCounters,
    is_stable,
    latency_summary,
    parse_statistics,
    stats_delta,
    summarize_models,
)

MODEL = "document_classifier"
OUTPUTS = ("LOGITS", "NUM_CHUNKS", "CHUNK_LOGITS", "CHUNK_SPANS")  # what the client asks for
COMPOSING = ("chunker", "encoder", "aggregator")


# ---------------------------------------------------------------------------------------
# configuration and corpus
# ---------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Everything a run is asked for (the CLI flags map one to one)."""

    url: str = "127.0.0.1:8001"
    protocol: str = "grpc"
    model: str = MODEL
    docs: int = 64
    seed: int = 0
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    rates: list[float] = field(default_factory=list)  # open loop, documents/s
    warmup_s: float = 5.0
    window_s: float = 10.0
    min_window_docs: int = 4
    stability: float = 0.10
    stable_windows: int = 3
    max_point_s: float = 120.0
    request_timeout_s: float = 600.0
    idle_timeout_s: float = 120.0
    repository: str | None = None  # the served repository: tokenizer, chunking, baselines
    baselines: list[str] = field(default_factory=list)  # "ort", "naive"
    baseline_time_limit_s: float = 300.0
    ort_threads: int | None = None
    ort_max_batch: int | None = None  # windows per onnxruntime call (default: the encoder's)
    checkpoint: str | None = None
    preset: str | None = None
    head: str | None = None
    random_head: bool | None = None
    reference_repository: str | None = None  # decisions to agree with (e.g. FP32 for INT8)
    # Shared machines: a point (or baseline) during which other processes used more than
    # this many cores is measured again after the machine is quiet, up to `retries` times.
    passes: int = 0  # > 0: closed-loop points do fixed work (the corpus this many times)
    max_other_cores: float | None = None
    retries: int = 2
    quiet_timeout_s: float = 900.0
    output: str | None = None
    label: str = ""
    progress: bool = True  # progress bars on stderr
    quiet: bool = False  # no messages on stderr at all


@dataclass
class BenchDoc:
    """One corpus document as sent, with what the served chunking makes of it."""

    index: int
    data: bytes
    num_tokens: int  # document tokens (no [CLS]/[SEP])
    num_chunks: int
    seq_len: int  # padded window length (bucket)
    needed_tokens: int  # tokens in the windows (incl. [CLS]/[SEP]), no padding
    computed_tokens: int  # num_chunks x seq_len: what the encoder computes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def load_chunking(repository: str | None):
    """Tokenizer and chunking of the served repository (defaults without one)."""
    from longdoc.checkpoint import default_tokenizer_dir
    from longdoc.chunking import ChunkingConfig, load_tokenizer

    if repository:
        here = Path(repository) / "chunker" / "1"
        return load_tokenizer(here / "tokenizer.json"), ChunkingConfig.load(here / "chunking.json")
    return load_tokenizer(default_tokenizer_dir()), ChunkingConfig()


def prepare_corpus(texts: list[str], tokenizer, chunking) -> list[BenchDoc]:
    from longdoc.chunking import chunk_text

    docs = []
    for index, text in enumerate(texts):
        chunks = chunk_text(text, tokenizer, chunking)
        docs.append(
            BenchDoc(
                index, text.encode("utf-8"), chunks.num_tokens, chunks.num_chunks,
                chunks.seq_len, int(chunks.attention_mask.sum()), chunks.input_ids.size,
            )
        )  # fmt: skip
    return docs


def build_corpus(n_docs: int, seed: int, tokenizer, chunking) -> list[BenchDoc]:
    """The benchmark corpus for a chunking: no document exceeds ``max_chunks`` windows."""
    from longdoc import corpus

    max_tokens = corpus.max_tokens_for(chunking.max_chunks, chunking.max_length, chunking.overlap)
    texts = corpus.benchmark_corpus(n_docs, seed, tokenizer, max_tokens)
    return prepare_corpus(texts, tokenizer, chunking)


CHUNK_BINS = ((1, 1), (2, 4), (5, 10), (11, 20), (21, 40), (41, 64), (65, 10**9))


def padding_waste(docs: list[BenchDoc]) -> dict:
    """Tokens the encoder computes over tokens the windows need (configured overlap
    included), minus one: the share of compute spent on padding."""
    needed = sum(d.needed_tokens for d in docs)
    computed = sum(d.computed_tokens for d in docs)
    return {
        "tokens_needed": needed,
        "tokens_computed": computed,
        "waste": computed / needed - 1 if needed else None,
    }


WHATIF_BUCKETS = (
    (512,), (128, 256, 384, 512), tuple(range(64, 513, 64)), tuple(range(32, 513, 32)),
)  # fmt: skip


def waste_whatif(docs: list[BenchDoc], chunking) -> list[dict]:
    """Padding waste of the same documents under other strategies and bucket sets (same
    max_length and overlap), with the number of distinct window lengths each produces
    (every distinct length is a separate batch queue in Triton's dynamic batcher). Planned
    from the token counts with the chunking module's own window plan: no re-tokenizing."""
    from dataclasses import replace

    from longdoc.chunking import plan_windows

    out = []
    for strategy in ("fixed", "balanced"):
        for buckets in WHATIF_BUCKETS:
            buckets = tuple(b for b in buckets if b <= chunking.max_length)
            cfg = replace(chunking, strategy=strategy, seq_buckets=buckets)
            needed = computed = 0
            lengths = set()
            for doc in docs:
                ranges, seq_len, _ = plan_windows(doc.num_tokens, cfg)
                needed += sum(end - start + 2 for start, end in ranges)
                computed += len(ranges) * seq_len
                lengths.add(seq_len)
            out.append({
                "strategy": strategy, "seq_buckets": list(cfg.seq_buckets),
                "waste": computed / needed - 1, "tokens_computed": computed,
                "distinct_seq_lens": len(lengths), "served": cfg == chunking,
            })  # fmt: skip
    return out


def corpus_summary(docs: list[BenchDoc]) -> dict:
    """The length distribution in tokens and windows, and the padding waste."""
    from longdoc.client.stats import percentile

    tokens = [d.num_tokens for d in docs]
    chunks = [d.num_chunks for d in docs]
    total_chunks = sum(chunks)
    bins = {}
    for lo, hi in CHUNK_BINS:
        inside = [c for c in chunks if lo <= c <= hi]
        if lo > 64 and not inside:
            continue
        name = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f">={lo}")
        bins[name] = {
            "docs": len(inside),
            "share_docs": len(inside) / len(docs) if docs else 0,
            "share_chunks": sum(inside) / total_chunks if total_chunks else 0,
        }
    seq = {}
    for d in docs:
        seq[str(d.seq_len)] = seq.get(str(d.seq_len), 0) + 1
    return {
        "docs": len(docs),
        "tokens": sum(tokens),
        "chunks": total_chunks,
        "bytes": sum(len(d.data) for d in docs),
        "tokens_percentiles": {f"p{q}": percentile(tokens, q) for q in (0, 10, 50, 90, 100)},
        "chunks_percentiles": {f"p{q}": percentile(chunks, q) for q in (0, 10, 50, 90, 100)},
        "mean_chunks": total_chunks / len(docs) if docs else 0,
        "chunk_bins": bins,
        "docs_per_seq_len": dict(sorted(seq.items(), key=lambda kv: int(kv[0]))),
        **padding_waste(docs),
    }


# ---------------------------------------------------------------------------------------
# talking to the server
# ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    doc: int
    start: float  # when the request was due (open loop: scheduled arrival)
    end: float
    error: str | None = None
    label: int | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


class Connection:
    """One aio client (gRPC or HTTP) with every document's request prebuilt."""

    def __init__(self, cfg: BenchConfig, docs: list[BenchDoc], max_inflight: int) -> None:
        self.cfg = cfg
        self.docs = docs
        url = cfg.url.removeprefix("http://").removeprefix("grpc://")
        if cfg.protocol == "grpc":
            import tritonclient.grpc.aio as module

            self.client = module.InferenceServerClient(url)
        elif cfg.protocol == "http":
            import tritonclient.http.aio as module

            self.client = module.InferenceServerClient(
                url, conn_limit=max(100, max_inflight + 4), conn_timeout=cfg.request_timeout_s
            )
        else:
            raise ValueError(f"protocol must be grpc or http (got {cfg.protocol!r})")
        self.module = module
        self.inputs = []
        for doc in docs:
            tensor = module.InferInput("TEXT", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([doc.data], dtype=object))
            self.inputs.append([tensor])
        self.outputs = None

    async def prepare(self) -> None:
        """Check the model is there and build the requested outputs (as the client does:
        the classification extension's ``class_count`` for PROBABILITIES)."""
        try:
            meta = await self.client.get_model_metadata(self.cfg.model)
        except Exception as exc:  # noqa: BLE001 - tritonclient's own exception types
            text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise RuntimeError(f"{self.cfg.protocol}://{self.cfg.url}: {text}") from exc
        if not isinstance(meta, dict):
            from google.protobuf.json_format import MessageToDict

            meta = MessageToDict(meta, preserving_proto_field_name=True)
        shapes = {o["name"]: [int(s) for s in o.get("shape", [])] for o in meta["outputs"]}
        if "LOGITS" not in shapes:
            raise RuntimeError(f"model {self.cfg.model} has no LOGITS output")
        self.num_labels = shapes["LOGITS"][-1]
        outputs = [self.module.InferRequestedOutput(n) for n in OUTPUTS if n in shapes]
        if "PROBABILITIES" in shapes:
            outputs.append(
                self.module.InferRequestedOutput("PROBABILITIES", class_count=self.num_labels)
            )
        self.outputs = outputs

    async def infer(self, index: int, start: float) -> Sample:
        sample = Sample(index, start, start)
        try:
            response = await asyncio.wait_for(
                self.client.infer(self.cfg.model, self.inputs[index], outputs=self.outputs),
                timeout=self.cfg.request_timeout_s,
            )
            sample.label = int(np.argmax(response.as_numpy("LOGITS")))
        except Exception as exc:  # noqa: BLE001 - counted per request
            text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            sample.error = (text or type(exc).__name__).strip()[:300]
        sample.end = time.perf_counter()
        return sample

    async def statistics(self) -> dict[str, ModelCounters]:
        if self.cfg.protocol == "grpc":
            raw = await self.client.get_inference_statistics(as_json=True)
        else:
            raw = await self.client.get_inference_statistics()
        return parse_statistics(raw)

    async def settled_statistics(
        self, interval: float = 0.05, timeout: float = 5.0
    ) -> tuple[dict[str, ModelCounters], bool]:
        """Statistics once two reads ``interval`` apart agree, and whether they did within
        ``timeout``. Triton records a request's counters just after its answer leaves, so a
        read right after the last answer can miss it; with a long interval, this also waits
        for a point's backlog to drain."""
        deadline = time.perf_counter() + timeout
        last = await self.statistics()
        while time.perf_counter() < deadline:
            await asyncio.sleep(interval)
            snap = await self.statistics()
            if _counter_key(snap) == _counter_key(last):
                return snap, True
            last = snap
        return last, False

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until the server finishes leftover work (counters stop moving for 1 s), so
        one point's backlog does not spill into the next."""
        return (await self.settled_statistics(interval=1.0, timeout=timeout))[1]

    async def close(self) -> None:
        await self.client.close()


def _counter_key(snap: dict[str, ModelCounters]) -> tuple:
    return tuple(
        (n, c.inference_count, c.durations.get("success", (0, 0))[0])
        for n, c in sorted(snap.items())
    )


# ---------------------------------------------------------------------------------------
# one load point
# ---------------------------------------------------------------------------------------


class CpuMonitor:
    """Where the machine's CPU time goes during a point (best effort, local servers only):
    the server's process tree (tritonserver and its Python-backend stubs, found by the
    port it listens on), this process, and everything else (other users of the machine:
    a point measured while they ran is not a clean measurement)."""

    def __init__(self, url: str | None = None) -> None:
        self.server = None
        try:
            import psutil

            host, _, port = (url or "").rpartition(":")
            if host in ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"):
                for conn in psutil.net_connections(kind="tcp"):
                    if conn.status == "LISTEN" and conn.laddr.port == int(port) and conn.pid:
                        self.server = psutil.Process(conn.pid)
                        break
            self.psutil = psutil
            self.me = psutil.Process()
        except Exception:  # noqa: BLE001 - no psutil, no permission: no CPU accounting
            self.psutil = None

    def snapshot(self) -> dict | None:
        if self.psutil is None:
            return None
        t = self.psutil.cpu_times()
        busy = t.user + t.nice + t.system + t.irq + t.softirq
        server = 0.0
        if self.server is not None:
            try:
                for proc in [self.server, *self.server.children(recursive=True)]:
                    times = proc.cpu_times()
                    server += times.user + times.system
            except self.psutil.Error:
                pass
        me = self.me.cpu_times()
        return {"busy": busy, "steal": t.steal, "server": server, "bench": me.user + me.system}

    def other_cores(self, seconds: float = 5.0) -> float | None:
        """Cores other processes use over the next ``seconds`` (blocking)."""
        start, t0 = self.snapshot(), time.perf_counter()
        time.sleep(seconds)
        usage = self.usage(start, self.snapshot(), time.perf_counter() - t0)
        return usage["other"] if usage else None

    def wait_quiet(self, threshold: float, timeout: float, log=None) -> bool:
        """Block until other processes use less than ``threshold`` cores (5 s samples)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            other = self.other_cores()
            if other is None or other < threshold:
                return True
            if log:
                log(f"other processes use {other:.2f} cores: waiting for a quiet machine")
            time.sleep(25)
        return False

    @staticmethod
    def usage(start: dict | None, end: dict | None, seconds: float) -> dict | None:
        """Cores used on average between two snapshots, by owner."""
        if not start or not end or seconds <= 0:
            return None
        cores = {k: (end[k] - start[k]) / seconds for k in start}
        cores["other"] = max(0.0, cores["busy"] - cores["server"] - cores["bench"])
        cores["machine"] = cores.pop("busy")
        return {k: round(v, 3) for k, v in cores.items()}


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
    conn: Connection, mode: str, level: float, cfg: BenchConfig, bar=None,
    cpu: CpuMonitor | None = None,
) -> tuple[dict, list[Sample]]:  # fmt: skip
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
        w_stats = await conn.statistics()
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
            end_stats = await conn.statistics()
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

    (stats_start, _), cpu_start = await conn.settled_statistics(), cpu.snapshot() if cpu else None
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ended = time.perf_counter()
    cpu_end = cpu.snapshot() if cpu else None
    stats_end, _ = await conn.settled_statistics()
    window = Window(started, ended + 1e-9, stats_start, stats_end, samples, 0, cpu_start, cpu_end)
    window.chunks = sum(docs[s.doc].num_chunks for s in samples if s.error is None)
    point = summarize_point("closed", concurrency, [window], [window], True, docs, started)
    point["fixed_work_passes"] = cfg.passes
    return point, samples


def summarize_point(
    mode: str, level: float, chosen: list[Window], windows: list[Window], stable: bool,
    docs: list[BenchDoc], started: float,
) -> dict:  # fmt: skip
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


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------


def machine_info() -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")),
            "",
        )
    except OSError:
        flags = ""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
    isa = [f for f in wanted if f" {f}" in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def repository_info(repository: str | None) -> dict:
    """What the served repository is: export report facts and the serving knobs."""
    if not repository:
        return {}
    repo = Path(repository)
    info: dict = {"path": str(repo.resolve())}
    report = repo / "export_report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        info |= {k: data.get(k) for k in ("source", "head", "precision", "profile", "chunking")}
    enc = repo / "encoder" / "config.pbtxt"
    if enc.is_file():
        text = enc.read_text()
        info["encoder_max_batch_size"] = _pbtxt_int(text, "max_batch_size")
        m = re.search(r"preferred_batch_size:\s*\[([^\]]*)\]", text)
        info["preferred_batch_sizes"] = [int(v) for v in m.group(1).split(",")] if m else []
        info["queue_delay_us"] = _pbtxt_int(text, "max_queue_delay_microseconds")
        m = re.search(
            r'key: "(?:ort_threads|intra_op_thread_count)" value: \{ string_value: "(\d+)"', text
        )
        info["ort_threads"] = int(m.group(1)) if m else 0
        m = re.search(r'key: "ort_batch" value: \{ string_value: "(\d+)"', text)
        info["ort_batch"] = int(m.group(1)) if m else 0  # 0: whole batch per call
        m = re.search(r"count:\s*(\d+)", text)
        info["encoder_instances"] = int(m.group(1)) if m else None
    chunker = repo / "chunker" / "config.pbtxt"
    if chunker.is_file():
        m = re.search(r"count:\s*(\d+)", chunker.read_text())
        info["chunker_instances"] = int(m.group(1)) if m else None
    return info


def _pbtxt_int(text: str, key: str) -> int | None:
    m = re.search(rf"\b{key}:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def _progress(cfg: BenchConfig, desc: str):
    from tqdm import tqdm

    return tqdm(desc=desc, unit="doc", file=sys.stderr, disable=not cfg.progress, leave=True)


def log(cfg: BenchConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, file=sys.stderr, flush=True)


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
            if not await conn.wait_idle(cfg.idle_timeout_s):
                log(cfg, "warning: server still busy after the idle timeout")
            name = f"concurrency {int(level)}" if mode == "closed" else f"rate {level:g}/s"
            for attempt in range(1 + (cfg.retries if cfg.max_other_cores is not None else 0)):
                if attempt:
                    quiet = await asyncio.to_thread(
                        cpu.wait_quiet, cfg.max_other_cores, cfg.quiet_timeout_s,
                        lambda m: log(cfg, m),
                    )  # fmt: skip
                    if not quiet:
                        log(cfg, "the machine did not get quiet: keeping the last measurement")
                        break
                    log(cfg, f"{name}: measuring again (attempt {attempt + 1})")
                    await conn.wait_idle(cfg.idle_timeout_s)
                bar = _progress(cfg, name)
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


def agreement(a: dict[int, int], b: dict[int, int]) -> dict:
    common = sorted(set(a) & set(b))
    same = sum(a[i] == b[i] for i in common)
    return {"docs": len(common), "agree": same, "rate": same / len(common) if common else None}


def run_bench(cfg: BenchConfig) -> dict:
    """The whole run; writes the results when ``cfg.output`` is set and returns them."""
    from longdoc.client import baselines as base

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
            data = {"partial": True, "config": asdict(cfg), "corpus": summary, "points": points}
            text = json.dumps(data, indent=2, default=_json)
            (Path(cfg.output) / "results.partial.json").write_text(text + "\n")

    points, served_labels, conc1 = asyncio.run(sweep(cfg, docs, partial))
    result: dict = {
        "label": cfg.label,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "machine": machine,
        "config": asdict(cfg),
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
    texts = [d.text for d in docs]
    if cfg.baselines:
        if not cfg.repository:
            raise ValueError("--baselines needs --repository DIR (the served ONNX files)")
        result["baselines"] = base.run_baselines(cfg, texts, docs, log=lambda m: log(cfg, m))
        result["ratios"] = ratios(result, conc1)
        labels = {name: b.pop("labels") for name, b in result["baselines"].items()}
        result["agreement"] = {
            f"served_vs_{name}": agreement(served_labels, lab) for name, lab in labels.items()
        }
    if cfg.reference_repository:
        log(cfg, f"reference decisions: in-process onnxruntime on {cfg.reference_repository}")
        ref = base.reference_labels(cfg.reference_repository, texts, cfg.ort_threads)
        result.setdefault("agreement", {})["served_vs_reference"] = agreement(served_labels, ref)
        result["agreement"]["served_vs_reference"]["repository"] = repository_info(
            cfg.reference_repository
        )
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["seconds"] = round(time.time() - started, 1)
    if cfg.output:
        write_results(result, Path(cfg.output))
        (Path(cfg.output) / "results.partial.json").unlink(missing_ok=True)
        log(cfg, f"wrote {cfg.output}/results.json, results.csv, latency_throughput.png")
    return result


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


# ---------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------

CSV_FIELDS = (
    "kind", "concurrency", "rate", "stable", "seconds", "docs", "errors", "docs_per_s",
    "chunks_per_s", "tokens_per_s", "lat_mean_ms", "lat_p50_ms", "lat_p90_ms", "lat_p95_ms",
    "lat_p99_ms", "lat_max_ms", "server_cores", "other_cores", "encoder_avg_batch",
    "encoder_queue_ms", "encoder_compute_ms", "encoder_busy", "chunker_queue_ms",
    "chunker_compute_ms", "aggregator_queue_ms", "aggregator_compute_ms",
)  # fmt: skip


def csv_rows(result: dict) -> list[dict]:
    rows = []
    for p in result["points"]:
        lat = p["latency_ms"]
        row = {
            "kind": p["mode"], "concurrency": p["concurrency"], "rate": p["rate"],
            "stable": p["stable"], "seconds": round(p["seconds"], 2), "docs": p["docs"],
            "errors": p["errors"],
        }  # fmt: skip
        for key in ("docs_per_s", "chunks_per_s", "tokens_per_s"):
            row[key] = round(p[key], 3)
        for key in ("mean", "p50", "p90", "p95", "p99", "max"):
            row[f"lat_{key}_ms"] = None if lat.get(key) is None else round(lat[key], 1)
        for model in COMPOSING:
            s = p["server"].get(model, {})
            row[f"{model}_queue_ms"] = _r(s.get("queue_ms"))
            row[f"{model}_compute_ms"] = _r(s.get("compute_infer_ms"))
        enc = p["server"].get("encoder", {})
        cores = p.get("cpu_cores") or {}
        row["server_cores"] = cores.get("server")
        row["other_cores"] = cores.get("other")
        row["encoder_avg_batch"] = _r(enc.get("avg_batch"))
        row["encoder_busy"] = _r(enc.get("busy_fraction"), 3)
        rows.append(row)
    for name, b in result.get("baselines", {}).items():
        lat = b.get("latency_ms") or {}
        row = {"kind": name, "seconds": round(b["seconds"], 2), "docs": b["docs"], "errors": 0}
        row["other_cores"] = (b.get("cpu_cores") or {}).get("other")
        for key in ("docs_per_s", "chunks_per_s", "tokens_per_s"):
            row[key] = round(b[key], 3)
        for key in ("mean", "p50", "p90", "p95", "p99", "max"):
            row[f"lat_{key}_ms"] = _r(lat.get(key))
        rows.append(row)
    return rows


def _r(value, digits: int = 2):
    return None if value is None else round(value, digits)


def write_results(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=_json) + "\n")
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in csv_rows(result):
            writer.writerow(row)
    plot(result, out / "latency_throughput.png")
    (out / "summary.md").write_text(markdown_summary(result))


def _f(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown_summary(result: dict) -> str:
    """The run as Markdown tables (what BENCHMARKS.md quotes)."""
    repo = result.get("repository", {})
    machine = result["machine"]
    corpus = result["corpus"]
    lines = [
        f"# {result.get('label') or 'longdoc bench'}",
        "",
        f"- server: {result['server']['protocol']} {result['server']['url']}, repository "
        f"{repo.get('source', '?')} ({repo.get('precision', '?')}, {repo.get('profile', '?')}); "
        f"encoder preferred batch {repo.get('preferred_batch_sizes')}, queue delay "
        f"{repo.get('queue_delay_us')} us, ort threads {repo.get('ort_threads')}, windows per "
        f"onnxruntime call {repo.get('ort_batch') or 'all'}, chunker "
        f"instances {repo.get('chunker_instances')}",
        f"- machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['isa'])}); "
        f"load average at start {machine['loadavg_start'][0]:.2f}",
        f"- corpus: {corpus['docs']} documents, {corpus['tokens']:,} tokens, {corpus['chunks']} "
        f"windows (mean {corpus['mean_chunks']:.1f}, max {corpus['chunks_percentiles']['p100']:g}"
        f"); padded-token waste {corpus['waste']:.1%}",
        "",
        "| load | docs/s | chunks/s | tokens/s | p50 ms | p90 ms | p95 ms | p99 ms | errors "
        "| enc. batch | enc. queue ms | enc. compute ms | enc. busy | chunker queue/compute ms "
        "| server cores | other cores | stable |",
        "|---" * 17 + "|",
    ]
    for p in result["points"]:
        lat = p["latency_ms"]
        enc = p["server"].get("encoder", {})
        chk = p["server"].get("chunker", {})
        cores = p.get("cpu_cores") or {}
        load = f"c={p['concurrency']}" if p["mode"] == "closed" else f"{p['rate']:g}/s"
        if p.get("fixed_work_passes"):
            load += f" (fixed work, {p['fixed_work_passes']} pass)"
        lines.append(
            f"| {load} | {p['docs_per_s']:.2f} | {p['chunks_per_s']:.1f} | "
            f"{p['tokens_per_s']:,.0f} | {_f(lat['p50'], '.0f')} | {_f(lat['p90'], '.0f')} | "
            f"{_f(lat['p95'], '.0f')} | {_f(lat['p99'], '.0f')} | {p['errors']} | "
            f"{_f(enc.get('avg_batch'))} | {_f(enc.get('queue_ms'), '.0f')} | "
            f"{_f(enc.get('compute_infer_ms'), '.0f')} | {_f(enc.get('busy_fraction'), '.2f')} | "
            f"{_f(chk.get('queue_ms'))}/{_f(chk.get('compute_infer_ms'))} | "
            f"{_f(cores.get('server'), '.2f')} | {_f(cores.get('other'), '.2f')} | "
            f"{'yes' if p['stable'] else 'no'} |"
        )
    if corpus.get("waste_whatif"):
        lines += [
            "",
            "| strategy | buckets | padded-token waste | distinct lengths | served |",
            "|---|---|---|---|---|",
        ]
        for w in corpus["waste_whatif"]:
            b = w["seq_buckets"]
            name = str(b[0]) if len(b) == 1 else f"{len(b)}: {b[0]}..{b[-1]}"
            lines.append(
                f"| {w['strategy']} | {name} | {w['waste']:.1%} | {w['distinct_seq_lens']} | "
                f"{'yes' if w['served'] else ''} |"
            )
    if result.get("baselines"):
        lines += [
            "",
            "| baseline | docs | docs/s | chunks/s | tokens/s | p50 ms | other cores |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, b in result["baselines"].items():
            lat = b.get("latency_ms") or {}
            cores = b.get("cpu_cores") or {}
            lines.append(
                f"| {name} | {b['docs']}{'' if b['complete'] else ' (time limit)'} | "
                f"{b['docs_per_s']:.2f} | {b['chunks_per_s']:.1f} | {b['tokens_per_s']:,.0f} | "
                f"{_f(lat.get('p50'), '.0f')} | {_f(cores.get('other'), '.2f')} |"
            )
    if result.get("ratios"):
        r = result["ratios"]
        lines.append("")
        for key in ("served_over_ort_batched", "served_over_best_ort", "served_over_naive"):
            if key in r:
                lines.append(f"- {key.replace('_', ' ')} (tokens/s, saturated): {r[key]:.2f}x")
        if "conc1_added_ms_per_doc" in r:
            c = r["conc1_added_ms_per_doc"]
            lines.append(
                f"- added latency at concurrency 1 over in-process onnxruntime: mean "
                f"{c['mean']:.1f} ms, median {c['median']:.1f} ms per document ({c['docs']} docs)"
            )
    for name, a in result.get("agreement", {}).items():
        if a.get("rate") is not None:
            lines.append(
                f"- decision agreement {name.replace('_', ' ')}: {a['agree']}/{a['docs']} "
                f"({a['rate']:.1%})"
            )
    return "\n".join(lines) + "\n"


def _json(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def plot(result: dict, path: Path) -> None:
    """Latency (p50, p99) against throughput (documents/s) for the closed-loop sweep and
    the open-loop points, with the baselines' throughput as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    closed = sorted(
        (p for p in result["points"] if p["mode"] == "closed" and p["docs"]),
        key=lambda p: p["concurrency"],
    )
    opened = sorted(
        (p for p in result["points"] if p["mode"] == "open" and p["docs"]), key=lambda p: p["rate"]
    )
    for points, style, name in ((closed, "-", "closed loop"), (opened, "--", "open loop")):
        if not points:
            continue
        x = [p["docs_per_s"] for p in points]
        for q, marker in (("p50", "o"), ("p99", "^")):
            y = [p["latency_ms"][q] / 1000 for p in points]
            ax.plot(x, y, style, marker=marker, label=f"{name} {q}")
        for p in points:
            tag = f"c={p['concurrency']}" if p["mode"] == "closed" else f"{p['rate']:g}/s"
            ax.annotate(tag, (p["docs_per_s"], p["latency_ms"]["p50"] / 1000), fontsize=7,
                        textcoords="offset points", xytext=(3, -10))  # fmt: skip
    colors = {"ort_batched": "green", "ort_single": "olive", "naive": "red"}
    for name, b in result.get("baselines", {}).items():
        if b.get("docs_per_s"):
            ax.axvline(b["docs_per_s"], color=colors.get(name, "gray"), linestyle=":",
                       label=f"{name} {b['docs_per_s']:.2f} docs/s")  # fmt: skip
    ax.set_xlabel("throughput (documents/s)")
    ax.set_ylabel("latency per document (s)")
    ax.set_yscale("log")
    repo = result.get("repository", {})
    title = result.get("label") or "longdoc bench"
    detail = ", ".join(
        str(v) for v in (repo.get("precision"), repo.get("profile"), result["server"]["protocol"])
        if v
    )  # fmt: skip
    corpus = result["corpus"]
    ax.set_title(
        f"{title} ({detail})\n{corpus['docs']} docs, mean {corpus['mean_chunks']:.1f} "
        f"chunks/doc; {result['machine']['cpu']}, {result['machine']['cores']} cores",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
