"""Test support for reliability work (not part of the product): a load generator with many
independent clients and every answer recorded, memory of the server's processes, results.

``run_load`` starts ``clients`` workers in one event loop; each worker is its own
``DocumentClassifierClient`` (its own connection, gRPC or HTTP in turn) and takes documents
from a shared queue, one at a time, until the queue is empty or ``duration_s`` has passed
(then it cycles through the documents again). Every document sent gets one ``Outcome``: its
answer or its error, when it started and finished, how many attempts it took. Nothing is
dropped: a worker whose connection cannot even be set up reports each document it held as
failed.

``MemorySampler`` samples the resident memory (RSS) of a server process tree in a thread
(the tree is walked by ``longdoc.bench.measurement.server_processes``, the one walk
the benchmark's CPU accounting also uses).
``check_outcomes`` compares every answer with the expected logits of *its own* document, so
a crossed response (the answer of another document) is caught, not only a wrong number.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from longdoc.bench.measurement import server_processes
from longdoc.client.classifier import Classification, DocumentClassifierClient, ServerUnavailable


@dataclass
class Outcome:
    """One request: which document, over what, its answer or error, and when."""

    doc_id: str
    protocol: str
    worker: int
    ok: bool
    error: str | None
    logits: np.ndarray | None
    num_chunks: int
    attempts: int
    started: float  # seconds since the run started
    finished: float
    chunk_spans: np.ndarray | None = None


@dataclass
class LoadReport:
    outcomes: list[Outcome]
    seconds: float
    clients: int

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def errors(self) -> Counter:
        """Error messages (first 120 characters) and how often each was seen."""
        return Counter((o.error or "")[:120] for o in self.outcomes if not o.ok)

    def latencies(self) -> dict[str, float]:
        lat = np.array([o.finished - o.started for o in self.outcomes]) if self.outcomes else None
        if lat is None:
            return {}
        return {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)} | {
            "max": float(lat.max())
        }


async def _worker(
    index: int,
    protocol: str,
    url: str,
    queue: asyncio.Queue,
    record: Callable[[Outcome], None],
    t0: float,
    *,
    retries: int | None,
    backoff_s: float,
    timeout_s: float,
    batch: int,
    deadline: float | None,
) -> None:
    client = DocumentClassifierClient(
        url, protocol, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s
    )
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return
        items = []
        while len(items) < batch and not queue.empty():
            items.append(queue.get_nowait())
        if not items:
            return
        ids = [doc_id for doc_id, _ in items]
        answered: set[str] = set()

        def on_result(result: Classification, answered: set = answered) -> None:
            finished = time.monotonic() - t0
            answered.add(result.id)
            record(
                Outcome(
                    doc_id=result.id,
                    protocol=protocol,
                    worker=index,
                    ok=result.ok,
                    error=result.error,
                    logits=result.logits,
                    num_chunks=result.num_chunks,
                    attempts=result.attempts,
                    started=finished - result.latency_s,
                    finished=finished,
                    chunk_spans=result.chunk_spans,
                )
            )

        started = time.monotonic() - t0
        try:
            # concurrency 1: this worker is one client with one request in flight
            await client.aclassify(
                [text for _, text in items], ids, concurrency=1, on_result=on_result
            )
        except Exception as exc:  # e.g. ServerUnavailable from the metadata call
            # whatever was not answered is reported failed, never dropped
            finished = time.monotonic() - t0
            reason = "not sent" if isinstance(exc, ServerUnavailable) else "lost"
            for doc_id in ids:
                if doc_id not in answered:
                    record(
                        Outcome(
                            doc_id,
                            protocol,
                            index,
                            False,
                            f"{reason}: {exc}",
                            None,
                            0,
                            0,
                            started,
                            finished,
                        )
                    )


def run_load(
    targets: Sequence[tuple[str, str]],
    documents: Sequence[tuple[str, bytes | str]],
    *,
    clients: int = 64,
    retries: int | None = None,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    duration_s: float | None = None,
    batch: int = 16,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> LoadReport:
    """Send ``documents`` (id, text) through ``clients`` workers; workers alternate over
    ``targets`` ((protocol, url) pairs). With ``duration_s`` the documents are sent again
    and again until that many seconds have passed; without it, each once. ``on_outcome``
    sees every outcome as it arrives (e.g. to inject a fault after N answers); a worker
    takes ``batch`` documents at a time over one connection."""
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    async def main() -> float:
        queue: asyncio.Queue = asyncio.Queue()
        t0 = time.monotonic()
        deadline = t0 + duration_s if duration_s else None

        def refill() -> None:
            for item in documents:
                queue.put_nowait(item)

        refill()

        async def keep_full() -> None:  # timed runs: top the queue up as it drains
            while time.monotonic() < deadline:
                if queue.qsize() < len(documents) // 2 + clients * batch:
                    refill()
                await asyncio.sleep(0.05)

        filler = asyncio.create_task(keep_full()) if deadline else None
        workers = [
            _worker(
                i,
                *targets[i % len(targets)],
                queue,
                record,
                t0,
                retries=retries,
                backoff_s=backoff_s,
                timeout_s=timeout_s,
                batch=batch,
                deadline=deadline,
            )
            for i in range(clients)
        ]
        await asyncio.gather(*workers)
        if filler:
            filler.cancel()
        return time.monotonic() - t0

    seconds = asyncio.run(main())
    return LoadReport(outcomes, seconds, clients)


def check_outcomes(report: LoadReport, expected: dict, atol: float = 1e-4) -> dict:
    """Compare every outcome with ``expected[doc_id]``.

    For a good document the expectation has ``logits``, ``spans`` and ``num_chunks`` (a
    ``longdoc.reference.DocumentResult``): the answer must match all three, so the answer
    of another document (a crossed response) is caught. For a bad document it is the
    substring its error must contain. A good document that failed is counted, not a
    problem: failures are allowed to happen (server down), wrong answers are not.
    Returns counts and the first problems found (``num_problems`` 0: all right)."""
    counts: Counter = Counter()
    problems: list[str] = []
    for o in report.outcomes:
        want = expected[o.doc_id]
        if isinstance(want, str):  # a bad document: must fail with its own error
            counts["bad_sent"] += 1
            if o.ok:
                problems.append(f"{o.doc_id}: bad document answered")
            elif want in (o.error or ""):
                counts["bad_error_seen"] += 1
            else:
                counts["bad_other_error"] += 1  # e.g. server down: reported, not wrong
            continue
        counts["good_sent"] += 1
        if not o.ok:
            counts["good_failed"] += 1
            continue
        counts["good_answered"] += 1
        if o.logits is None or o.logits.shape != want.logits.shape:
            problems.append(f"{o.doc_id}: logits shape {getattr(o.logits, 'shape', None)}")
        elif o.num_chunks != want.num_chunks or (
            o.chunk_spans is not None and not np.array_equal(o.chunk_spans, want.spans)
        ):
            problems.append(f"{o.doc_id}: chunks/spans of another document (crossed)")
        elif np.abs(o.logits - want.logits).max() > atol:
            delta = np.abs(o.logits - want.logits).max()
            problems.append(f"{o.doc_id}: |delta logits| {delta:.3g} (crossed or wrong)")
        else:
            counts["good_correct"] += 1
    return {"counts": dict(counts), "problems": problems[:20], "num_problems": len(problems)}


# --------------------------------------------------------------------------- memory


def server_tree(pid: int):
    """psutil processes of a server: ``pid`` and all its descendants."""
    return list(server_processes(pid))


SERVER_PROCESSES = ("tritonserver", "triton_python")  # a launcher's own Python is left out


def _server_processes(pid: int, names: tuple[str, ...]):
    """The processes of ``pid``'s tree whose name starts with ``names``."""
    return server_processes(pid, names)


def _proc_mib(pid: int, file: str, keys: tuple[str, ...]) -> dict[str, float]:
    """``key: value`` lines of /proc/<pid>/<file> (kB) as MiB; missing keys are left out."""
    out = {}
    with open(f"/proc/{pid}/{file}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0]) / 1024
    return out


def tree_rss_mb(pid: int, names: tuple[str, ...] = SERVER_PROCESSES) -> float:
    """Summed RSS (MiB) of tritonserver and its Python-backend stubs in ``pid``'s tree."""
    import psutil

    total = 0
    for proc in _server_processes(pid, names):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def tree_footprint(pid: int, names: tuple[str, ...] = SERVER_PROCESSES) -> dict:
    """Memory of ``pid``'s tree (same processes as ``tree_rss_mb``) with each page counted
    once (PSS, Linux), in MiB: ``private`` (anonymous: heaps, buffers) and ``shared`` (shared
    memory: the Python backend's pools, which tritonserver and a stub both map)."""
    total = {"private": 0.0, "shared": 0.0}
    for proc in _server_processes(pid, names):
        try:
            pss = _proc_mib(proc.pid, "smaps_rollup", ("Pss_Anon", "Pss_Shmem"))
        except OSError:
            continue
        total["private"] += pss.get("Pss_Anon", 0.0)
        total["shared"] += pss.get("Pss_Shmem", 0.0)
    return {k: round(v, 1) for k, v in total.items()}


def tree_memory(pid: int, names: tuple[str, ...] = SERVER_PROCESSES) -> list:
    """Per process of ``pid``'s tree (same processes as ``tree_rss_mb``): name (the model
    instance for a stub), RSS and its anonymous and shared-memory parts, in MiB (Linux)."""
    import psutil

    rows = []
    for proc in _server_processes(pid, names):
        try:
            cmd = proc.cmdline()
            stub = proc.name().startswith("triton_python") and len(cmd) > 2
            status = _proc_mib(proc.pid, "status", ("VmRSS", "RssAnon", "RssShmem"))
        except (psutil.Error, OSError):
            continue
        mib = {key: round(value, 1) for key, value in status.items()}
        rows.append(
            {
                "process": cmd[-2] if stub else proc.name(),
                "rss_mb": mib.get("VmRSS"),
                "anon_mb": mib.get("RssAnon"),
                "shmem_mb": mib.get("RssShmem"),
            }
        )
    return rows


@dataclass
class MemorySampler:
    """Samples ``tree_rss_mb(pid_fn())`` every ``interval`` s in a thread (``with`` block).

    ``pid_fn`` is called at each sample, so the tree can be replaced (a restarted server).
    """

    pid_fn: Callable[[], int]
    interval: float = 0.5
    samples: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> float | None:
        try:
            mb = tree_rss_mb(self.pid_fn())
        except Exception:  # server between lives: no sample
            return None
        self.samples.append((time.monotonic() - self._t0, mb))
        return mb

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def summary(self) -> dict:
        values = [mb for _, mb in self.samples]
        if not values:
            return {}
        return {
            "samples": len(values),
            "start_mb": round(values[0], 1),
            "peak_mb": round(max(values), 1),
            "end_mb": round(values[-1], 1),
        }


# --------------------------------------------------------------------------- results


def listening_addresses(port: int) -> list:
    """Addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    ip = ipaddress.ip_address(packed)
                    found.append(getattr(ip, "ipv4_mapped", None) or ip)
    return found


def results_dir() -> Path:
    """Where reliability figures go: $LONGDOC_RESULTS_DIR, else ./reliability_results."""
    return Path(os.environ.get("LONGDOC_RESULTS_DIR") or "reliability_results")


def save_results(file: str, section: str, data: dict) -> Path:
    """Merge ``{section: data}`` into the JSON file ``results_dir()/file`` (created if
    missing), so each test adds its own figures to one file per test module."""
    path = results_dir() / file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    current[section] = data
    current.setdefault("_meta", {})["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path.write_text(json.dumps(current, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Counter):
        return dict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
