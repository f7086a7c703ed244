"""This machine's matrix-multiply ceiling through onnxruntime, and the encoder against it.

What `longdoc bench --ceiling` measures, in the same run as the served figures:

* **GEMM rates** through onnxruntime's CPU execution provider, with the session options the
  served encoder uses (all cores, ``ORT_ENABLE_ALL``): FP32 ``MatMul``, and the INT8 path
  ``quantize_dynamic`` produces from that same ``MatMul`` (DynamicQuantizeLinear +
  MatMulInteger, which onnxruntime fuses into ``DynamicQuantizeMatMul``), at the encoder's
  own shapes (one window of ``S`` rows per call, as the portable encoder runs: the QKV
  projection ``S x H x 3H``, the output projection ``S x H x H``, the FFN ``S x H x F`` and
  ``S x F x H``; attention's two batched products ``heads x S x d x S`` and ``heads x S x S x d``,
  which stay FP32 in the INT8 graph too) and at a large square size.
* **The encoder's arithmetic per window** from its config (layers, hidden, FFN, heads) at
  each window's padded length (what the encoder computes) and at its real length:
  ``2 S (4 H^2 + 2 H F) + 4 S^2 H`` per layer (multiply-add = 2 operations).
* **The ceiling**: the time a window would take if every one of its matrix products ran at
  the rate measured for its shape (nothing else costs anything); over the corpus, windows/s
  and tokens/s. Served figures as a fraction of it: what the rest of the graph (LayerNorm,
  GELU, softmax, quantizing activations) and the serving path cost.
* **Which kernels ran**: onnxruntime's own profile (op types and kernels per node) of the
  GEMM sessions and of one window through the served encoder (time per op type), and, with
  ``perf`` on the machine, the instructions of the hottest code in libonnxruntime (MLAS):
  ``vpdpbusd`` (AVX-512 VNNI), ``vfmadd231ps`` on ``zmm`` (AVX-512F) or ``ymm`` (AVX2),
  ``vpmaddubsw`` (the AVX2 INT8 path without VNNI), ``vdpbf16ps`` (BF16).

``python -m longdoc.bench.ceiling --repository DIR`` prints the whole dict as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from longdoc.export.precision import INT8_SETTINGS

from longdoc import contract
from longdoc.presets import window_flops as window_flops_of

SQUARE = 2048
# The quantization setting of ``quantize_dynamic`` that export uses (``precision.quantize_int8``)
INT8_DEFAULT = INT8_SETTINGS


# ---------------------------------------------------------------------------------------
# the encoder's architecture and arithmetic
# ---------------------------------------------------------------------------------------


def architecture(repository: str | Path) -> dict:
    """layers, hidden, ffn, heads of the repository's encoder: its export report's
    ``architecture``; for older exports, the source it records (a preset's table, or the
    checkpoint's config.json), else the ONNX graph (Attention nodes, weights, FFN biases)."""
    from longdoc.runtime import export_metadata

    repo = Path(repository)
    report = export_metadata(repo)
    source = report.get("source", "")
    a = report.get("architecture")
    if a and all(k in a for k in ("layers", "hidden", "ffn", "heads")):
        return _arch(a["layers"], a["hidden"], a["ffn"], a["heads"], source)
    if source.startswith("preset:"):
        from longdoc.presets import PRESETS

        p = PRESETS[source.split(":", 1)[1]]
        return _arch(
            p["num_hidden_layers"],
            p["hidden_size"],
            p["intermediate_size"],
            p["num_attention_heads"],
            source,
        )
    config = Path(source) / contract.CONFIG_FILE if source else None
    if config and config.is_file():
        c = json.loads(config.read_text())
        return _arch(
            c["num_hidden_layers"],
            c["hidden_size"],
            c["intermediate_size"],
            c["num_attention_heads"],
            source,
        )
    return _arch_from_graph(repo / contract.ENCODER / "1" / contract.ONNX_FILE, source)


def _arch(layers: int, hidden: int, ffn: int, heads: int, source: str) -> dict:
    return {
        "layers": int(layers),
        "hidden": int(hidden),
        "ffn": int(ffn),
        "heads": int(heads),
        "source": source,
    }


def _arch_from_graph(path: Path, source: str) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    attn = [n for n in model.graph.node if n.op_type in ("Attention", "QAttention")]
    if not attn:
        raise ValueError(f"{path}: no fused Attention nodes: give the architecture instead")
    heads = next(a.i for a in attn[0].attribute if a.name == "num_heads")
    hidden = shapes[attn[0].input[1]][0]
    ffn = next(
        (
            shapes[n.input[1]][0]
            for n in model.graph.node
            if n.op_type in ("BiasGelu", "FastGelu") and n.input[1] in shapes
        ),
        4 * hidden,
    )
    return _arch(len(attn), hidden, ffn, heads, source)


def gemm_shapes(arch: dict, seq: int) -> list[dict]:
    """The matrix products of one layer for one window of ``seq`` rows."""
    h, f, heads = arch["hidden"], arch["ffn"], arch["heads"]
    d = h // heads
    return [
        {"name": "qkv", "m": seq, "k": h, "n": 3 * h, "batch": 1, "quantized": True},
        {"name": "attn_out", "m": seq, "k": h, "n": h, "batch": 1, "quantized": True},
        {"name": "ffn_in", "m": seq, "k": h, "n": f, "batch": 1, "quantized": True},
        {"name": "ffn_out", "m": seq, "k": f, "n": h, "batch": 1, "quantized": True},
        {"name": "scores", "m": seq, "k": d, "n": seq, "batch": heads, "quantized": False},
        {"name": "context", "m": seq, "k": seq, "n": d, "batch": heads, "quantized": False},
    ]


def _flops(shape: dict) -> float:
    return 2.0 * shape["batch"] * shape["m"] * shape["k"] * shape["n"]


def window_flops(arch: dict, seq: int) -> float:
    """Operations (multiply-add = 2) of one window of ``seq`` tokens through the encoder:
    ``layers x (2 S (4 H^2 + 2 H F) + 4 S^2 H)``, the formula of ``longdoc.presets`` (which
    the GPU checks use too); ``gemm_shapes`` of every layer add up to it."""
    return window_flops_of(arch["layers"], arch["hidden"], arch["ffn"], seq)


# ---------------------------------------------------------------------------------------
# GEMM graphs and their timing
# ---------------------------------------------------------------------------------------


def matmul_model(shape: dict, seed: int = 0):
    """``Y = A @ W``: A an input ``[batch?, m, k]``, W a constant ``[batch?, k, n]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    lead = [shape["batch"]] if shape["batch"] > 1 else []
    w = rng.standard_normal([*lead, shape["k"], shape["n"]], dtype=np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"], name="gemm")],
        "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [*lead, shape["m"], shape["k"]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*lead, shape["m"], shape["n"]])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _quantize(src: Path, dst: Path, options: dict) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # "consider pre-processing": not for one MatMul
    try:
        _quantize_dynamic(src, dst, options, quantize_dynamic, QuantType)
    finally:
        logging.disable(logging.NOTSET)


def _quantize_dynamic(src, dst, options, quantize_dynamic, QuantType) -> None:
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=options.get("per_channel", False),
        reduce_range=options.get("reduce_range", False),
        weight_type=getattr(QuantType, options.get("weight_type", "QInt8")),
    )


def _session(path: Path, threads: int | None, profile: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_runs(run, min_time_s: float, min_runs: int = 3, warmup: int = 2) -> dict:
    """Seconds per call of ``run()``: median and best over at least ``min_runs`` calls and
    ``min_time_s`` seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_time_s:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "best_s": float(min(times)), "runs": len(times)}


def _profiled_kernels(session) -> dict:
    """op type -> {kernel, provider, ms}: the nodes onnxruntime's profile says ran."""
    path = session.end_profiling()
    try:
        events = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    out: dict[str, dict] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = args.get("op_name", "?")
        entry = out.setdefault(op, {"provider": args.get("provider"), "us": 0, "calls": 0})
        entry["us"] += int(e.get("dur", 0))
        entry["calls"] += 1
    return out


def measure_gemm(
    shape: dict,
    precision: str,
    threads: int | None = None,
    min_time_s: float = 0.5,
    int8: dict | None = None,
    workdir: Path | None = None,
    profile: bool = False,
) -> dict:
    """One matrix product's rate through onnxruntime, FP32 or the ``quantize_dynamic`` path."""
    import onnx

    tmp = Path(workdir or tempfile.mkdtemp(prefix="ceiling_"))
    fp32 = tmp / f"{shape['name']}_{shape['m']}x{shape['k']}x{shape['n']}_b{shape['batch']}.onnx"
    onnx.save(matmul_model(shape), str(fp32))
    path = fp32
    if precision == "int8" and shape.get("quantized", True):
        path = fp32.with_name(fp32.stem + "_int8.onnx")
        _quantize(fp32, path, int8 or INT8_DEFAULT)
    session = _session(path, threads)
    lead = [shape["batch"]] if shape["batch"] > 1 else []
    a = np.random.default_rng(1).standard_normal([*lead, shape["m"], shape["k"]]).astype(np.float32)
    timing = time_runs(lambda: session.run(None, {"A": a}), min_time_s)
    flops = _flops(shape)
    out = shape | {
        "precision": precision if path is not fp32 else "fp32",
        "flops": flops,
        "gflops_per_s": flops / timing["median_s"] / 1e9,
        "gflops_per_s_best": flops / timing["best_s"] / 1e9,
        **timing,
    }
    if profile:
        prof = _session(path, threads, profile=True)
        for _ in range(3):
            prof.run(None, {"A": a})
        out["kernels"] = _profiled_kernels(prof)
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------
# the ceiling for a corpus
# ---------------------------------------------------------------------------------------


def window_lengths(docs) -> Counter:
    """padded window length -> windows of the corpus (BenchDoc: ``seq_len``, ``num_chunks``)."""
    counts: Counter = Counter()
    for d in docs:
        counts[int(d.seq_len)] += int(d.num_chunks)
    return counts


def ceiling_for(
    arch: dict,
    lengths: Counter,
    precision: str,
    threads: int | None = None,
    min_time_s: float = 0.5,
    int8: dict | None = None,
    profile: bool = True,
    cache: dict | None = None,
) -> dict:
    """GEMM rates at every shape of the corpus's windows, and the ceiling they give.
    ``cache`` (shared between precisions) keeps FP32 products measured once: attention's
    two products are FP32 in both graphs."""
    cache = {} if cache is None else cache
    tmp = Path(tempfile.mkdtemp(prefix="ceiling_"))
    try:
        per_len: dict[int, dict] = {}
        for seq in sorted(lengths):
            gemms = []
            for shape in gemm_shapes(arch, seq):
                first = profile and seq == max(lengths)
                runs_as = precision if shape["quantized"] else "fp32"
                key = (runs_as, *(shape[k] for k in ("m", "k", "n", "batch")))
                if key not in cache:
                    cache[key] = measure_gemm(
                        shape, runs_as, threads, min_time_s, int8, tmp, profile=first
                    )
                gemms.append(cache[key])
            seconds = arch["layers"] * sum(g["flops"] / (g["gflops_per_s"] * 1e9) for g in gemms)
            per_len[seq] = {
                "windows": lengths[seq],
                "flops_per_window": window_flops(arch, seq),
                "ceiling_s_per_window": seconds,
                "gemms": gemms,
            }
        square = {
            "name": "square",
            "m": SQUARE,
            "k": SQUARE,
            "n": SQUARE,
            "batch": 1,
            "quantized": True,
        }
        big = measure_gemm(square, precision, threads, min_time_s, int8, tmp, profile=profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    windows = sum(lengths.values())
    seconds = sum(v["windows"] * v["ceiling_s_per_window"] for v in per_len.values())
    flops = sum(v["windows"] * v["flops_per_window"] for v in per_len.values())
    return {
        "precision": precision,
        "int8_options": (int8 or INT8_DEFAULT) if precision == "int8" else None,
        "windows": windows,
        "flops": flops,
        "ceiling_seconds": seconds,
        "ceiling_windows_per_s": windows / seconds,
        "ceiling_gflops_per_s": flops / seconds / 1e9,  # the shapes' rates, weighted
        "square": big,
        "by_length": {str(k): v for k, v in per_len.items()},
    }


def served_fraction(ceiling: dict, docs, served: dict | None) -> dict | None:
    """Served windows/s and tokens/s against the ceiling over the same corpus."""
    if not served or not served.get("chunks_per_s"):
        return None
    tokens = sum(d.num_tokens for d in docs)
    ceiling_tokens_per_s = tokens / ceiling["ceiling_seconds"]
    # tokens/s is the fair rate: a window of 128 tokens costs less than one of 512
    fraction = served["tokens_per_s"] / ceiling_tokens_per_s
    return {
        "served_windows_per_s": served["chunks_per_s"],
        "served_tokens_per_s": served["tokens_per_s"],
        "ceiling_windows_per_s": ceiling["ceiling_windows_per_s"],
        "ceiling_tokens_per_s": ceiling_tokens_per_s,
        "served_gflops_per_s": fraction * ceiling["ceiling_gflops_per_s"],
        "fraction": fraction,
    }


# ---------------------------------------------------------------------------------------
# which kernels: onnxruntime's profile of the served encoder, and perf
# ---------------------------------------------------------------------------------------


def encoder_profile(
    repository: str | Path, seq: int = 512, threads: int | None = None, runs: int = 3
) -> dict:
    """Time per op type (and the provider) of one window of ``seq`` tokens through the
    repository's encoder, from onnxruntime's profile."""
    src = Path(repository) / contract.ENCODER / "1" / contract.ONNX_FILE
    tmp = Path(tempfile.mkdtemp(prefix="encprof_"))
    try:
        link = tmp / "encoder.onnx"
        link.symlink_to(src.resolve())
        session = _session(link, threads, profile=True)
        ids = np.full((1, seq), 1000, dtype=np.int64)
        ids[0, 0], ids[0, -1] = 101, 102
        feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: np.ones_like(ids)}
        for _ in range(runs):
            session.run(None, feeds)
        kernels = _profiled_kernels(session)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(k["us"] for k in kernels.values()) or 1
    ops = {
        op: {
            "provider": k["provider"],
            "ms_per_window": k["us"] / runs / 1000,
            "share": k["us"] / total,
        }
        for op, k in sorted(kernels.items(), key=lambda kv: -kv[1]["us"])
    }
    return {"seq": seq, "runs": runs, "ms_per_window": total / runs / 1000, "ops": ops}


ISA_PATTERNS = {
    "avx512_vnni (vpdpbusd)": re.compile(r"\bvpdpbusds?\b"),
    "avx512f fma (vfmadd*ps zmm)": re.compile(r"\bvfmadd\d+ps\b.*%zmm"),
    "avx2 fma (vfmadd*ps ymm)": re.compile(r"\bvfmadd\d+ps\b.*%ymm"),
    "avx2 int8 (vpmaddubsw)": re.compile(r"\bvpmaddubsw\b"),
    "bf16 (vdpbf16ps)": re.compile(r"\bvdpbf16ps\b"),
    "amx (tdp*)": re.compile(r"\btdp\w+\b"),
}


def perf_kernels(precision: str, shape: dict | None = None, seconds: float = 2.0) -> dict:
    """Run one GEMM in a child process, sample it with ``perf record -p`` once it is warm,
    and classify the instructions around the sampled addresses in onnxruntime's library:
    each hot cluster of addresses (the kernel's loop) with the ISA markers it contains."""
    if not shutil.which("perf") or not shutil.which("objdump"):
        return {"available": False, "reason": "perf or objdump not installed"}
    shape = shape or {
        "name": "square",
        "m": 1024,
        "k": 1024,
        "n": 1024,
        "batch": 1,
        "quantized": True,
    }
    tmp = Path(tempfile.mkdtemp(prefix="perf_"))
    child = None
    try:
        data = tmp / "perf.data"
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "longdoc.bench.ceiling",
                "--spin",
                precision,
                "--spin-shape",
                json.dumps(shape),
                "--spin-seconds",
                str(seconds + 60),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if child.stdout.readline().strip() != "ready":
            return {"available": False, "reason": "the GEMM child did not start"}
        rec = subprocess.run(
            [
                "perf",
                "record",
                "-q",
                "-o",
                str(data),
                "-p",
                str(child.pid),
                "--",
                "sleep",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=60 + seconds,
        )
        bases = _load_bases(child.pid)
        child.kill()
        if not data.exists():
            return {"available": False, "reason": (rec.stderr or rec.stdout)[-300:]}
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "ip,dso"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return {
            "available": True,
            "precision": precision,
            "shape": shape,
            **_classify_samples(script.stdout, bases),
        }
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": str(exc)}
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _load_bases(pid: int) -> dict[str, int]:
    """Library path -> the address it is mapped at (its offset-0 mapping) in ``pid``."""
    bases: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and int(parts[2], 16) == 0 and parts[5].startswith("/"):
            bases.setdefault(parts[5], int(parts[0].split("-")[0], 16))
    return bases


def _classify_samples(
    script: str, bases: dict[str, int] | None = None, gap: int = 2048, top: int = 4
) -> dict:
    """``perf script -F ip,dso`` lines -> share of samples in onnxruntime, and its hottest
    address clusters (as addresses in the library file) with the ISA markers found in
    their code."""
    bases = bases or {}
    by_dso: Counter = Counter()
    ips: Counter = Counter()
    libs: dict[str, str] = {}
    for line in script.splitlines():
        m = re.match(r"\s*([0-9a-f]+)\s+\((.+)\)", line)
        if not m:
            continue
        dso = m.group(2)
        ip = int(m.group(1), 16) - bases.get(dso, 0)
        by_dso[Path(dso).name] += 1
        if "onnxruntime" in dso:
            ips[(dso, ip)] += 1
            libs[dso] = dso
    total = sum(by_dso.values()) or 1
    clusters: list[dict] = []
    for dso in libs:
        addrs = sorted(ip for d, ip in ips if d == dso)
        group: list[int] = []
        for ip in [*addrs, None]:
            if ip is not None and (not group or ip - group[-1] <= gap):
                group.append(ip)
                continue
            if group:
                n = sum(ips[(dso, a)] for a in group)
                clusters.append(
                    {
                        "dso": Path(dso).name,
                        "path": dso,
                        "start": group[0],
                        "end": group[-1],
                        "samples": n,
                    }
                )
            group = [ip] if ip is not None else []
    clusters.sort(key=lambda c: -c["samples"])
    hottest = []
    seen: Counter = Counter()
    for c in clusters[:top]:
        found = _isa_in(Path(c.pop("path")), c["start"], c["end"] + 16)
        for k, v in found.items():
            seen[k] += c["samples"] if v else 0
        hottest.append(
            c
            | {
                "start": hex(c["start"]),
                "end": hex(c["end"]),
                "share": c["samples"] / total,
                "instructions": found,
            }
        )
    return {
        "samples": total,
        "by_library": {k: v / total for k, v in by_dso.most_common(5)},
        "hottest": hottest,
        "isa_seen": [k for k, _ in seen.most_common()],
    }


def _isa_in(lib: Path, start: int, stop: int) -> dict:
    """ISA marker instructions in ``lib``'s code between two addresses."""
    if not lib.is_file():
        return {}
    out = subprocess.run(
        [
            "objdump",
            "-d",
            "--no-show-raw-insn",
            f"--start-address={start:#x}",
            f"--stop-address={stop:#x}",
            str(lib),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    counts = {k: 0 for k in ISA_PATTERNS}
    for line in out.stdout.splitlines():
        for name, pattern in ISA_PATTERNS.items():
            if pattern.search(line):
                counts[name] += 1
    return {k: v for k, v in counts.items() if v}


def _spin(precision: str, shape: dict, seconds: float) -> None:
    import onnx

    tmp = Path(tempfile.mkdtemp(prefix="spin_"))
    try:
        fp32 = tmp / "m.onnx"
        onnx.save(matmul_model(shape), str(fp32))
        path = fp32
        if precision == "int8":
            path = tmp / "m_int8.onnx"
            _quantize(fp32, path, INT8_DEFAULT)
        session = _session(path, None)
        lead = [shape["batch"]] if shape["batch"] > 1 else []
        a = np.random.default_rng(1).standard_normal([*lead, shape["m"], shape["k"]])
        a = a.astype(np.float32)
        session.run(None, {"A": a})
        print("ready", flush=True)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            session.run(None, {"A": a})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# one call for `longdoc bench`
# ---------------------------------------------------------------------------------------


def run_ceiling(
    repository: str | Path,
    docs,
    served: dict | None = None,
    threads: int | None = None,
    min_time_s: float = 0.5,
    precisions: tuple[str, ...] | None = None,
    perf: bool = True,
    arch: dict | None = None,
) -> dict:
    """The whole ceiling section of a run: the served precision's (and FP32's) ceiling over
    the corpus ``docs``, the served fraction, the encoder's profile and the kernels seen."""
    from longdoc.runtime import export_metadata

    arch = arch or architecture(repository)
    served_precision = export_metadata(repository).get("precision", "fp32")
    precisions = precisions or ("fp32", "int8")
    lengths = window_lengths(docs)
    tokens = sum(d.num_tokens for d in docs)
    real = sum(d.needed_tokens for d in docs)
    computed_flops = sum(lengths[s] * window_flops(arch, s) for s in lengths)
    out: dict = {
        "architecture": arch,
        "served_precision": served_precision,
        "threads": threads or os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "corpus": {
            "windows": sum(lengths.values()),
            "windows_by_length": {str(k): v for k, v in sorted(lengths.items())},
            "tokens": tokens,
            "flops": computed_flops,
            "flops_per_window_512": window_flops(arch, 512),
            "mean_real_window_tokens": real / max(1, sum(lengths.values())),
        },
        "ceilings": {},
    }
    cache: dict = {}
    for precision in precisions:
        out["ceilings"][precision] = ceiling_for(
            arch, lengths, precision, threads, min_time_s, cache=cache
        )
    main = out["ceilings"][served_precision if served_precision in out["ceilings"] else "fp32"]
    out["served"] = served_fraction(main, docs, served)
    if served and "fp32" in out["ceilings"] and served_precision != "fp32":
        out["served_vs_fp32_ceiling"] = served_fraction(out["ceilings"]["fp32"], docs, served)
    out["encoder_profile"] = encoder_profile(repository, max(lengths), threads)
    if perf:
        out["perf"] = {p: perf_kernels(p) for p in precisions}
    out["loadavg_end"] = list(os.getloadavg())
    return out


def ceiling_lines(c: dict) -> list[str]:
    """summary.md section."""
    a = c["architecture"]
    lines = [
        f"Matrix-multiply ceiling through onnxruntime ({c['threads']} threads; load average "
        f"{c['loadavg_start'][0]:.2f} at start, {c['loadavg_end'][0]:.2f} at end): encoder "
        f"{a['layers']} layers, hidden {a['hidden']}, FFN {a['ffn']}, {a['heads']} heads; "
        f"{c['corpus']['flops_per_window_512'] / 1e9:.1f} GFLOP per 512-token window; corpus "
        f"{c['corpus']['windows']} windows {c['corpus']['windows_by_length']} (mean real "
        f"length {c['corpus']['mean_real_window_tokens']:.0f} tokens), "
        f"{c['corpus']['flops'] / 1e12:.2f} TFLOP.",
        "",
        "| precision | GEMM GFLOP/s at the encoder's shapes (weighted) | square "
        f"{SQUARE}^3 GFLOP/s | ceiling windows/s | ceiling tokens/s |",
        "|---|---|---|---|---|",
    ]
    tokens = c["corpus"]["tokens"]
    for p, ce in c["ceilings"].items():
        lines.append(
            f"| {p} | {ce['ceiling_gflops_per_s']:.0f} | {ce['square']['gflops_per_s']:.0f} | "
            f"{ce['ceiling_windows_per_s']:.1f} | {tokens / ce['ceiling_seconds']:,.0f} |"
        )
    for key, name in (("served", "its own precision's"), ("served_vs_fp32_ceiling", "FP32")):
        s = c.get(key)
        if s:
            lines.append(
                f"- served against {name} ceiling: {s['served_windows_per_s']:.1f} windows/s, "
                f"{s['served_tokens_per_s']:,.0f} tokens/s = **{s['fraction']:.0%}** "
                f"({s['served_gflops_per_s']:.0f} GFLOP/s effective)"
            )
    prof = c.get("encoder_profile")
    if prof:
        top = ", ".join(f"{op} {v['share']:.0%}" for op, v in list(prof["ops"].items())[:6])
        lines.append(
            f"- encoder, one {prof['seq']}-token window in-process: "
            f"{prof['ms_per_window']:.1f} ms; {top}"
        )
    for p, ce in c["ceilings"].items():
        kernels = ce["square"].get("kernels")
        if kernels:
            lines.append(
                f"- {p} GEMM nodes onnxruntime ran: "
                + ", ".join(f"{op} ({k['provider']})" for op, k in kernels.items())
            )
    for p, info in (c.get("perf") or {}).items():
        if info.get("available"):
            lines.append(
                f"- {p} hottest code (perf + objdump): "
                f"{', '.join(info['isa_seen']) or 'no ISA marker found'}"
            )
        else:
            lines.append(f"- {p} perf: not available ({info.get('reason', '')[:80]})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m longdoc.bench.ceiling", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--repository", help="model repository (its encoder's architecture)")
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--min-time-s", type=float, default=0.5)
    p.add_argument("--no-perf", action="store_true")
    p.add_argument("--output", help="write the JSON here too")
    p.add_argument("--spin", choices=("fp32", "int8"), help=argparse.SUPPRESS)
    p.add_argument("--spin-shape", help=argparse.SUPPRESS)
    p.add_argument("--spin-seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.spin:
        _spin(args.spin, json.loads(args.spin_shape), args.spin_seconds)
        return 0
    if not args.repository:
        p.error("--repository is required")
    from longdoc.bench.workload import build_corpus, load_chunking

    tokenizer, chunking = load_chunking(args.repository)
    docs = build_corpus(args.docs, args.seed, tokenizer, chunking)
    result = run_ceiling(
        args.repository, docs, None, args.threads, args.min_time_s, perf=not args.no_perf
    )
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print("\n".join(ceiling_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
