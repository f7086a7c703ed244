"""What `longdoc bench` observes besides its own answers.

* Triton's statistics extension: ``parse_statistics`` / ``stats_delta`` /
  ``summarize_models`` (counters, the difference between two snapshots, and per model
  queue / compute times per request, average batch size, busy fraction and the batch-size
  histogram of each execution), read over a connection by ``ServerStatistics``;
* the serving facts of the repository (``repository_info``): from its export report
  (``export_report.json``: what the configs were built from), never from config.pbtxt;
* the server's processes: ``server_pid`` (the process listening on a local port) and
  ``server_processes`` (it and its descendants, e.g. tritonserver and its Python-backend
  stubs): the one walk of the server's process tree, which ``CpuMonitor`` (cores used by
  the server, this process and everything else) and the reliability tests' memory
  sampling use.

The machine a run was taken on (CPU, instruction sets, cores, load) is
``longdoc.machine.machine_info``, shared with training and ``gpu_checks``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.client import transport

from longdoc import contract

# inference_stats durations Triton reports per request (cumulative count and ns).
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0")


# ---------------------------------------------------------------------------------------
# Triton statistics
# ---------------------------------------------------------------------------------------


@dataclass
class ModelCounters:
    """Cumulative counters of one model (Triton's ``ModelStatistics``)."""

    inference_count: int = 0  # batch items (chunks for the encoder)
    execution_count: int = 0  # model executions (batches)
    durations: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (count, ns)
    # batch size -> (executions, compute_input ns, compute_infer ns, compute_output ns)
    batches: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)


def _count_ns(entry: dict | None) -> tuple[int, int]:
    # gRPC's JSON writes 64-bit integers as strings and omits zero fields; HTTP has ints.
    entry = entry or {}
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


def parse_statistics(raw: dict) -> dict[str, ModelCounters]:
    """``{model name: counters}`` from a statistics reply (HTTP JSON or gRPC ``as_json``).
    Several versions of one model are summed."""
    out: dict[str, ModelCounters] = {}
    for model in raw.get("model_stats", []):
        counters = out.setdefault(model["name"], ModelCounters())
        counters.inference_count += int(model.get("inference_count", 0))
        counters.execution_count += int(model.get("execution_count", 0))
        stats = model.get("inference_stats", {})
        for name in DURATIONS:
            count, ns = _count_ns(stats.get(name))
            old = counters.durations.get(name, (0, 0))
            counters.durations[name] = (old[0] + count, old[1] + ns)
        for batch in model.get("batch_stats", []):
            size = int(batch["batch_size"])
            executions = _count_ns(batch.get("compute_infer"))[0]
            ns = [_count_ns(batch.get(name))[1] for name in BATCH_DURATIONS]
            old = counters.batches.get(size, (0, 0, 0, 0))
            new = (executions, *ns)
            counters.batches[size] = tuple(a + b for a, b in zip(old, new))  # type: ignore[assignment]
    return out


def stats_delta(
    before: dict[str, ModelCounters], after: dict[str, ModelCounters]
) -> dict[str, ModelCounters]:
    """Counters accumulated between two snapshots (``after - before``), per model."""
    out = {}
    for name, end in after.items():
        start = before.get(name, ModelCounters())
        durations = {
            key: (
                value[0] - start.durations.get(key, (0, 0))[0],
                value[1] - start.durations.get(key, (0, 0))[1],
            )
            for key, value in end.durations.items()
        }
        batches = {}
        for size, value in end.batches.items():
            old = start.batches.get(size, (0, 0, 0, 0))
            diff = tuple(a - b for a, b in zip(value, old))
            if diff[0] > 0:
                batches[size] = diff
        out[name] = ModelCounters(
            end.inference_count - start.inference_count,
            end.execution_count - start.execution_count,
            durations,
            batches,  # type: ignore[arg-type]
        )
    return out


def _ms_per(ns: int, count: int) -> float | None:
    return ns / count / 1e6 if count else None


def summarize_model(delta: ModelCounters, seconds: float) -> dict:
    """One model over a window: requests, per-request queue / compute times (ms), average
    batch size, busy fraction (execution time / window; above 1 when several instances run
    at once), the batch-size histogram and the mean compute time of each batch size."""
    requests, success_ns = delta.durations.get("success", (0, 0))
    failed = delta.durations.get("fail", (0, 0))[0]
    out: dict = {
        "requests": requests,
        "failed": failed,
        "items": delta.inference_count,
        "executions": delta.execution_count,
        "avg_batch": delta.inference_count / delta.execution_count
        if delta.execution_count
        else None,
        "request_ms": _ms_per(success_ns, requests),
    }
    for name in ("queue", "compute_input", "compute_infer", "compute_output"):
        count, ns = delta.durations.get(name, (0, 0))
        out[f"{name}_ms"] = _ms_per(ns, count)
    busy_ns = sum(sum(value[1:]) for value in delta.batches.values())
    out["busy_fraction"] = busy_ns / 1e9 / seconds if seconds > 0 else None
    out["batch_histogram"] = {
        str(size): value[0] for size, value in sorted(delta.batches.items())
    }  # JSON keys: strings, sorted by size
    # mean compute_infer per execution of each batch size: the cost of batching
    out["batch_infer_ms"] = {
        str(size): value[2] / value[0] / 1e6 for size, value in sorted(delta.batches.items())
    }
    return out


def summarize_models(delta: dict[str, ModelCounters], seconds: float) -> dict[str, dict]:
    return {name: summarize_model(counters, seconds) for name, counters in sorted(delta.items())}


class ServerStatistics:
    """Triton's statistics over one aio client (``headers`` go with each read: a server
    started with ``--restrict-api statistics`` wants its key)."""

    def __init__(self, client, protocol: str, headers: dict[str, str] | None = None) -> None:
        self.client = client
        self.protocol = protocol
        self.headers = headers or None

    async def read(self) -> dict[str, ModelCounters]:
        return parse_statistics(
            await transport.statistics(self.client, self.protocol, self.headers)
        )

    async def settled(
        self, interval: float = 0.05, timeout: float = 5.0
    ) -> tuple[dict[str, ModelCounters], bool]:
        """Statistics once two reads ``interval`` apart agree, and whether they did within
        ``timeout``. Triton records a request's counters just after its answer leaves, so a
        read right after the last answer can miss it; with a long interval, this also waits
        for a point's backlog to drain."""
        deadline = time.perf_counter() + timeout
        last = await self.read()
        while time.perf_counter() < deadline:
            await asyncio.sleep(interval)
            snap = await self.read()
            if _counter_key(snap) == _counter_key(last):
                return snap, True
            last = snap
        return last, False

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until the server finishes leftover work (counters stop moving for 1 s), so
        one point's backlog does not spill into the next."""
        return (await self.settled(interval=1.0, timeout=timeout))[1]


def _counter_key(snap: dict[str, ModelCounters]) -> tuple:
    return tuple(
        (n, c.inference_count, c.durations.get("success", (0, 0))[0])
        for n, c in sorted(snap.items())
    )


# ---------------------------------------------------------------------------------------
# the server's processes
# ---------------------------------------------------------------------------------------


def server_pid(url: str) -> int | None:
    """The process listening on ``url``'s port, when the host is this machine."""
    import psutil

    host, _, port = transport.normalize_url(url).rpartition(":")
    if host not in LOCAL_HOSTS or not port.isdigit():
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == "LISTEN" and conn.laddr.port == int(port) and conn.pid:
            return conn.pid
    return None


def server_processes(pid: int, names: tuple[str, ...] | None = None) -> Iterator:
    """psutil processes of ``pid``'s tree (it and all its descendants), those whose name
    starts with one of ``names`` when given; processes that exit meanwhile are skipped."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in tree:
        if names is not None:
            try:
                if not proc.name().startswith(names):
                    continue
            except psutil.Error:  # a process that exited between listing and reading
                continue
        yield proc


class CpuMonitor:
    """Where the machine's CPU time goes during a point (best effort, local servers only):
    the server's process tree (tritonserver and its Python-backend stubs, found by the
    port it listens on), this process, and everything else (other users of the machine:
    a point measured while they ran is not a clean measurement)."""

    def __init__(self, url: str | None = None) -> None:
        self.server: int | None = None
        try:
            import psutil

            self.server = server_pid(url) if url else None
            self.psutil = psutil
            self.me = psutil.Process()
        except Exception:  # no psutil, no permission: no CPU accounting
            self.psutil = None

    def snapshot(self) -> dict | None:
        if self.psutil is None:
            return None
        t = self.psutil.cpu_times()
        busy = t.user + t.nice + t.system + t.irq + t.softirq
        server = 0.0
        if self.server is not None:
            for proc in server_processes(self.server):
                try:
                    times = proc.cpu_times()
                except self.psutil.Error:  # exited between listing and reading
                    continue
                server += times.user + times.system
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


def repository_info(repository: str | None) -> dict:
    """What the served repository is and how it is served, from its export report
    (``export_report.json``; its ``serving`` section holds the numbers the configs were
    built from). An export without that section gives ``None`` for the serving facts."""
    if not repository:
        return {}
    repo = Path(repository)
    info: dict = {"path": str(repo.resolve())}
    path = repo / contract.EXPORT_REPORT
    data = json.loads(path.read_text()) if path.is_file() else {}
    info |= {k: data.get(k) for k in ("source", "head", "precision", "profile", "chunking")}
    serving = data.get("serving") or {}
    instances = serving.get("instances") or {}
    threads = serving.get("ort_threads")
    if isinstance(threads, dict):
        threads = threads.get(contract.ENCODER)
    info |= {
        "encoder_max_batch_size": serving.get("max_batch_size"),
        "preferred_batch_sizes": serving.get("preferred_batch_sizes"),
        "queue_delay_us": serving.get("queue_delay_us"),
        "ort_threads": threads,  # 0: all cores
        "ort_batch": serving.get("ort_batch"),  # 0: the whole batch per call
        "encoder_instances": instances.get(contract.ENCODER),
        "chunker_instances": instances.get(contract.CHUNKER),
        "max_chunks": serving.get("max_chunks"),
    }
    return info


def encoder_max_batch(repository: str | Path, default: int = 64) -> int:
    """The encoder's ``max_batch_size`` (windows per Triton batch) from the export report."""
    value = repository_info(str(repository)).get("encoder_max_batch_size")
    return int(value) if value else default
