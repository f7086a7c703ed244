"""Numbers for `longdoc bench`: percentiles and window stability.

Pure functions over plain data (no server, no numpy needed), the bottom of the package:

* ``percentile``: linear interpolation between closest ranks, the definition of
  ``numpy.percentile``'s default method;
* ``latency_summary``: count, mean, min, max and percentiles in milliseconds;
* ``is_stable``: perf_analyzer's rule: the last windows' throughputs all lie within a
  fraction of their mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES = (50, 90, 95, 99)


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
