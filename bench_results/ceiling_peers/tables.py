"""BENCHMARKS.md's ceiling and peers tables from the results.json files of run_all.sh.

Run ``.venv/bin/python bench_results/ceiling_peers/tables.py``: it prints Markdown.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def load(name: str) -> dict | None:
    path = HERE / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_avg(r: dict) -> str:
    return f"{r['machine']['loadavg_start'][0]:.1f} -> {r['machine']['loadavg_end'][0]:.1f}"


def other_cores(r: dict) -> str:
    vals = [p["cpu_cores"]["other"] for p in r["points"] if p.get("cpu_cores")]
    return f"{max(vals):.2f}" if vals else "-"


def ceiling_table() -> list[str]:
    lines = [
        "| model, served precision | served windows/s | served tokens/s | FP32 GEMM ceiling "
        "GFLOP/s (encoder shapes / 2048^3) | INT8 GEMM ceiling GOP/s (encoder shapes / 2048^3) "
        "| ceiling windows/s (own precision) | served / own ceiling | served / FP32 ceiling "
        "| load avg (start -> end) | other cores (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("minilm_fp32", "minilm_int8", "large_fp32", "large_int8"):
        r = load(name)
        if not r or "ceiling" not in r:
            continue
        c = r["ceiling"]
        f, i = c["ceilings"]["fp32"], c["ceilings"]["int8"]
        s = c["served"]
        vs32 = c.get("served_vs_fp32_ceiling") or s
        lines.append(
            f"| {name} | {s['served_windows_per_s']:.1f} | {s['served_tokens_per_s']:,.0f} | "
            f"{f['ceiling_gflops_per_s']:.0f} / {f['square']['gflops_per_s']:.0f} | "
            f"{i['ceiling_gflops_per_s']:.0f} / {i['square']['gflops_per_s']:.0f} | "
            f"{s['ceiling_windows_per_s']:.1f} | **{s['fraction']:.0%}** | "
            f"{vs32['fraction']:.0%} | {load_avg(r)} | {other_cores(r)} |"
        )
    return lines


def int8_table() -> list[str]:
    lines = [
        "| model | FP32 served tokens/s | INT8 served tokens/s | INT8 / FP32 | decisions INT8 = "
        "FP32 | target |",
        "|---|---|---|---|---|---|",
    ]
    for model, target in (("minilm", 2.0), ("base", None), ("large", 2.5)):
        a, b = load(f"{model}_fp32"), load(f"{model}_int8")
        if not a or not b:
            continue
        ta, tb = a["saturated"]["tokens_per_s"], b["saturated"]["tokens_per_s"]
        agree = (b.get("agreement") or {}).get("served_vs_reference") or {}
        ag = f"{agree['agree']}/{agree['docs']}" if agree else "-"
        tgt = f">= {target}x: {'met' if tb / ta >= target else 'not met'}" if target else ""
        lines.append(f"| {model} | {ta:,.0f} | {tb:,.0f} | {tb / ta:.2f}x | {ag} | {tgt} |")
    return lines


def peers_tables() -> list[str]:
    lines: list[str] = []
    for name in ("minilm_fp32", "minilm_int8", "base_fp32", "base_int8"):
        r = load(name)
        if not r or "peers" not in r:
            continue
        from longdoc.bench.peers import peers_table

        lines += [
            f"**{name}** ({r['corpus']['docs']} documents, {r['corpus']['tokens']:,} "
            f"tokens, {r['corpus']['chunks']} windows; load average {load_avg(r)})",
            "",
        ]
        lines += peers_table(r["peers"]) + [""]
    return lines


if __name__ == "__main__":
    print("\n".join([*ceiling_table(), "", *int8_table(), "", *peers_tables()]))
