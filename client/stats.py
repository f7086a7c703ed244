"""Numbers for `longdoc bench`: percentiles, window stability, Triton statistics deltas.

Pure functions over plain data (no server, no numpy needed), so each is easy to test:

* ``percentile``: linear interpolation between closest ranks, the definition of
  ``numpy.percentile``'s default method;
* ``is_stable``: perf_analyzer's rule: the last windows' throughputs all lie within a
  fraction of their mean;
* ``parse_statistics`` / ``stats_delta`` / ``summarize_models``: Triton's statistics
  extension (``get_inference_statistics``) as counters, the difference between two
  snapshots, and per-model queue / compute times per request, average batch size, busy
  fraction and the batch-size histogram of each execution (``batch_stats``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 95, 99)
# inference_stats durations Triton reports per request (cumulative count and ns).
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, as ``numpy.percentile``:
    rank ``h = (n - 1) q / 100`` in the sorted values, interpolated between its neighbours."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100] (got {q})")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def latency_summary(seconds: Sequence[float], qs: Iterable[float] = PERCENTILES) -> dict:
    """Latency in milliseconds: count, mean, min, max and the percentiles ``qs``."""
    ms = [s * 1000 for s in seconds]
    out: dict = {"count": len(ms)}
    if not ms:
        return out | {"mean": None, "min": None, "max": None} | {f"p{q:g}": None for q in qs}
    out |= {"mean": sum(ms) / len(ms), "min": min(ms), "max": max(ms)}
    for q in qs:
        out[f"p{q:g}"] = percentile(ms, q)
    return out


def is_stable(values: Sequence[float], tolerance: float) -> bool:
    """True when every value is within ``tolerance`` (a fraction) of the values' mean."""
    if not values:
        return False
    mean = sum(values) / len(values)
    if mean <= 0:
        return False
    return all(abs(v - mean) <= tolerance * mean for v in values)


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
            key: (value[0] - start.durations.get(key, (0, 0))[0],
                  value[1] - start.durations.get(key, (0, 0))[1])
            for key, value in end.durations.items()
        }  # fmt: skip
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
