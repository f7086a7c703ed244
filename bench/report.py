"""`longdoc bench`'s output: results.json, results.csv, summary.md, latency_throughput.png.

Pure functions of the result dict (``render`` rewrites every file from a results.json).
Further measurements of a run add their own section: a result key and a function in
``SECTIONS`` that turns ``result[key]`` into Markdown lines for summary.md (the mixed
workload's is ``mixed_lines``; the machine ceiling and peer libraries plug in the same way).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from longdoc.bench.ceiling import ceiling_lines
from longdoc.bench.peers import peers_table

from longdoc import contract

COMPOSING = contract.MODELS

CSV_FIELDS = (
    "kind",
    "concurrency",
    "rate",
    "stable",
    "seconds",
    "docs",
    "errors",
    "docs_per_s",
    "chunks_per_s",
    "tokens_per_s",
    "lat_mean_ms",
    "lat_p50_ms",
    "lat_p90_ms",
    "lat_p95_ms",
    "lat_p99_ms",
    "lat_max_ms",
    "server_cores",
    "other_cores",
    "encoder_avg_batch",
    "encoder_busy",
    *(f"{model}_{what}_ms" for model in COMPOSING for what in ("queue", "compute")),
)


def csv_rows(result: dict) -> list[dict]:
    rows = []
    for p in result["points"]:
        lat = p["latency_ms"]
        row = {
            "kind": p["mode"],
            "concurrency": p["concurrency"],
            "rate": p["rate"],
            "stable": p["stable"],
            "seconds": round(p["seconds"], 2),
            "docs": p["docs"],
            "errors": p["errors"],
        }
        for key in ("docs_per_s", "chunks_per_s", "tokens_per_s"):
            row[key] = round(p[key], 3)
        for key in ("mean", "p50", "p90", "p95", "p99", "max"):
            row[f"lat_{key}_ms"] = None if lat.get(key) is None else round(lat[key], 1)
        for model in COMPOSING:
            s = p["server"].get(model, {})
            row[f"{model}_queue_ms"] = _r(s.get("queue_ms"))
            row[f"{model}_compute_ms"] = _r(s.get("compute_infer_ms"))
        enc = p["server"].get(contract.ENCODER, {})
        cores = p.get("cpu_cores") or {}
        row["server_cores"] = cores.get("server")
        row["other_cores"] = cores.get("other")
        row["encoder_avg_batch"] = _r(enc.get("avg_batch"))
        row["encoder_busy"] = _r(enc.get("busy_fraction"), 3)
        rows.append(row)
    for m in result.get("mixed") or []:
        for phase in ("short_only", "mixed"):
            lat = m[phase]["latency_ms"]
            row = {
                "kind": f"{phase}_short",
                "rate": m["rate"],
                "seconds": m["duration_s"],
                "docs": m[phase]["docs"],
                "errors": m[phase]["errors"],
            }
            for key in ("mean", "p50", "p90", "p95", "p99", "max"):
                row[f"lat_{key}_ms"] = _r(lat.get(key))
            enc = m[phase]["server"].get(contract.ENCODER, {})
            row["encoder_avg_batch"] = _r(enc.get("avg_batch"))
            row["encoder_queue_ms"] = _r(enc.get("queue_ms"))
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
    """Every output file of a run, from its result."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=json_default) + "\n")
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in csv_rows(result):
            writer.writerow(row)
    if any(p["docs"] for p in result["points"]):  # a mixed-only run has no such curve
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
    if not result["points"]:  # e.g. a mixed-workload run alone
        lines = lines[:-3]
    for p in result["points"]:
        lat = p["latency_ms"]
        enc = p["server"].get(contract.ENCODER, {})
        chk = p["server"].get(contract.CHUNKER, {})
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
    for key, render in SECTIONS.items():
        if result.get(key):
            lines += ["", *render(result[key])]
    return "\n".join(lines) + "\n"


def mixed_lines(points: list[dict]) -> list[str]:
    """The mixed workload: short documents' latency alone and with long ones in flight."""
    lines = [
        "## Mixed workload",
        "",
        "Short documents (open loop, same arrivals) alone and while long documents are in "
        "flight; mixed counts only short documents that arrived during a long one.",
        "",
        "| short rate | short windows | long windows x in flight | short docs alone / mixed "
        "| p50 alone ms | p99 alone ms | p50 mixed ms | p99 mixed ms | p99 ratio (target) "
        "| long docs done | long p50 s | long coverage | errors |",
        "|---" * 13 + "|",
    ]
    for m in points:
        a, x = m["short_only"], m["mixed"]
        long = x["long"]
        lo, hi = m["short_windows"]
        ratio = m.get("p99_ratio")
        verdict = "" if m.get("meets_target") is None else (" ok" if m["meets_target"] else " over")
        p50_long = long["latency_ms"].get("p50")
        lines.append(
            f"| {m['rate']:g}/s | {lo}-{hi} | {'/'.join(map(str, m['long_windows']))} x "
            f"{m['long_inflight']} | {a['docs']} / {x['docs']} | "
            f"{_f(a['latency_ms'].get('p50'), '.0f')} | {_f(a['latency_ms'].get('p99'), '.0f')} | "
            f"{_f(x['latency_ms'].get('p50'), '.0f')} | {_f(x['latency_ms'].get('p99'), '.0f')} | "
            f"{_f(ratio, '.2f')}x ({m['target_p99_ratio']:g}x){verdict} | {long['done']} | "
            f"{_f(None if p50_long is None else p50_long / 1000, '.1f')} | "
            f"{_f(long.get('coverage'), '.0%')} | "
            f"{a['errors']}/{x['errors']}/{long['errors']} |"
        )
    return lines


# result key -> Markdown lines of its section in summary.md, in this order. The machine's
# matmul ceiling (ceiling.py) and the peer libraries (peers.py) add theirs here.
SECTIONS: dict[str, Callable[[object], list[str]]] = {
    "mixed": mixed_lines,
    "ceiling": ceiling_lines,
    "peers": peers_table,
}


def render(out: Path) -> None:
    """Rewrite ``out``'s results.csv, plot and summary.md from its results.json."""
    write_results(json.loads((Path(out) / "results.json").read_text()), Path(out))


def json_default(value):
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
            ax.annotate(
                tag,
                (p["docs_per_s"], p["latency_ms"]["p50"] / 1000),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, -10),
            )
    colors = {"ort_batched": "green", "ort_single": "olive", "naive": "red"}
    for name, b in result.get("baselines", {}).items():
        if b.get("docs_per_s"):
            ax.axvline(
                b["docs_per_s"],
                color=colors.get(name, "gray"),
                linestyle=":",
                label=f"{name} {b['docs_per_s']:.2f} docs/s",
            )
    ax.set_xlabel("throughput (documents/s)")
    ax.set_ylabel("latency per document (s)")
    ax.set_yscale("log")
    repo = result.get("repository", {})
    title = result.get("label") or "longdoc bench"
    detail = ", ".join(
        str(v)
        for v in (repo.get("precision"), repo.get("profile"), result["server"]["protocol"])
        if v
    )
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
