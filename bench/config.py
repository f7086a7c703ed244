"""What one `longdoc bench` run is asked for (``BenchConfig``) and how it talks on stderr.

Standard library only: every other module of the package imports this one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from longdoc import contract


@dataclass
class BenchConfig:
    """Everything a run is asked for (the CLI flags map one to one)."""

    url: str = "127.0.0.1:8001"
    protocol: str = "grpc"
    model: str = contract.ENSEMBLE
    headers: dict[str, str] = field(default_factory=dict)  # sent with every call
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
    request_timeout_s: float = 600.0  # --timeout: the deadline of each measured request
    # --retries: retries of what the server did not run (unavailable, connection refused)
    # for the call before the measurement (model metadata); none by default, so that an
    # unreachable server is reported at once. Measured requests are never retried: a
    # failure is counted as an error of its point.
    retries: int | None = None
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
    # this many cores is measured again after the machine is quiet, up to `remeasure` times.
    passes: int = 0  # > 0: closed-loop points do fixed work (the corpus this many times)
    max_other_cores: float | None = None
    remeasure: int = 2
    quiet_timeout_s: float = 900.0
    # Mixed workload (fairness to short documents): short documents arriving at each of
    # `mixed_rates` documents/s (open loop), alone and then while `long_inflight` long
    # documents of `long_windows` windows are in flight, `mixed_duration_s` each.
    mixed_rates: list[float] = field(default_factory=list)
    short_windows: tuple[int, int] = (1, 4)
    short_docs: int = 32
    long_windows: int = 300
    long_inflight: int = 1
    mixed_duration_s: float = 30.0
    # This machine's matmul ceiling (ceiling.py) and peer libraries (peers.py), same run.
    ceiling: bool = False
    peers: list[str] = field(default_factory=list)  # peers.PEERS names
    output: str | None = None
    label: str = ""
    progress: bool = True  # progress bars on stderr
    quiet: bool = False  # no messages on stderr at all


def log(cfg: BenchConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, file=sys.stderr, flush=True)


def progress(cfg: BenchConfig, desc: str):
    from tqdm import tqdm

    return tqdm(desc=desc, unit="doc", file=sys.stderr, disable=not cfg.progress, leave=True)
