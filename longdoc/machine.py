"""What machine a figure came from: CPU model, instruction sets, cores, load.

One module for every record that names its machine (training's `training.json`, the
benchmark's reports, `gpu_checks`, the export report's INT8 kernel path), standard library
only, so that the client-only install and `gpu_checks` can import it.

Why the instruction sets matter: onnxruntime's integer kernels differ by CPU. With AVX-512
VNNI (or AVX-VNNI) a u8 x s8 product accumulates in int32 (`vpdpbusd`); on AVX2 alone the
`vpmaddubsw` path adds pairs of products into int16 and saturates when weights use the full
8-bit range (DESIGN.md, "Measuring"), and it is not faster than FP32 at the encoders' shapes.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

# The instruction sets reported with every figure (in this order).
REPORTED_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), or what `platform` knows elsewhere."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_flags() -> set[str]:
    """Every flag of the first CPU in `/proc/cpuinfo` (empty where there is none)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def isa(flags: set[str] | None = None) -> list[str]:
    """The reported instruction sets this CPU has, in `REPORTED_ISA` order."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in REPORTED_ISA if f in flags]


def int8_kernel_path(flags: set[str] | None = None) -> str:
    """Which onnxruntime integer kernel path this CPU runs: `vnni`, `avx2` (u8 x s8 summed
    into int16, no VNNI) or `other` (no AVX2: neither)."""
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in VNNI_FLAGS):
        return "vnni"
    return "avx2" if "avx2" in flags else "other"


def serving_int8_kernels() -> str:
    """The kernel path INT8 serving takes here: `int8_kernel_path()`, unless the
    `LONGDOC_INT8_KERNELS` variable forces one (tests serve the non-VNNI choice with it)."""
    return os.environ.get("LONGDOC_INT8_KERNELS") or int8_kernel_path()


def machine_info() -> dict:
    """The machine a measurement was taken on: CPU, instruction sets, cores, load."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": isa(),
        "int8_kernels": int8_kernel_path(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def int8_serving_note(flags: set[str] | None = None) -> str:
    """What serving an INT8 encoder on this CPU gives, in one line (export and `longdoc
    serve` print it; BENCHMARKS.md "INT8 on CPUs with and without VNNI" has the figures)."""
    path = int8_kernel_path(flags)
    if path == "vnni":
        return "INT8 kernels: VNNI (u8 x s8 summed in int32): INT8 is the fastest CPU option"
    return (
        f"INT8 kernels: {path.upper()} without VNNI: onnxruntime's INT8 encoder was measured "
        "no faster than FP32 on such CPUs (BENCHMARKS.md); serve an FP32 export on this machine"
    )
