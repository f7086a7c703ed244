"""The tables of ACCURACY.md, from the reports `longdoc evaluate` wrote.

    python -m longdoc.accuracy_tables runs/accuracy mean-pool truncation --pair mean-pool truncation

Each row is a folder ``ROOT/<row>/seed*/`` holding ``test/report.json`` (the report of
``longdoc evaluate --output ROOT/<row>/seedS/test``; an older run's ``test.json`` is read too)
and ``training.json`` (the run's record): the table gives mean ± standard deviation over
seeds; ``--pair A B`` adds, seed by seed, the paired tests between two rows (same seed,
same test documents): McNemar on the discordant documents and the paired bootstrap of the
accuracy difference. Kept apart from ``longdoc evaluate``, which scores one model; this
compares many, from files alone (numpy and SciPy; no model is loaded).

Multi-label reports (``"problem": "multi-label"``) get their own table: micro-F1, macro-F1,
subset accuracy and micro-F1 over 2,048 tokens; their paired tests are McNemar on exact
label-set matches and the paired bootstrap of the micro-F1 difference. A table holds one
kind: multi-label rows are printed after the single-label ones, under their own header.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from longdoc.contract import TRAINING_JSON
from longdoc.metrics import bootstrap_difference, bootstrap_micro_f1_difference, mcnemar

REPORTS = ("test/report.json", "test.json")  # `--output .../test`, and the older file


def _stat(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


MULTI_LABEL_HEADER = [
    "| row | seeds | micro-F1 | macro-F1 | subset accuracy | micro-F1 > 2,048 tokens (n) "
    "| train s |",
    "|---|---|---|---|---|---|---|",
]


def is_multilabel(report: dict) -> bool:
    return report.get("problem") == "multi-label"


def accuracy_table(root: Path, rows: list[str]) -> tuple[str, dict[str, list[dict]]]:
    """Markdown rows (mean ± spread over seeds) from ``root/<row>/seed*/test/report.json``, and
    the reports found per row (rows without any are left out of both). Multi-label rows go
    to a second table of their own (micro-F1, macro-F1, subset accuracy)."""
    lines = [
        "| row | seeds | accuracy | macro-F1 | accuracy > 2,048 tokens (n) | train s |",
        "|---|---|---|---|---|---|",
    ]
    multi: list[str] = []
    found: dict[str, list[dict]] = {}
    for row in rows:
        reports = []
        for seed in sorted(p for p in Path(root, row).glob("seed*") if p.is_dir()):
            path = next((seed / name for name in REPORTS if (seed / name).is_file()), None)
            if path is None:
                continue
            rep = json.loads(path.read_text())
            record = json.loads((seed / TRAINING_JSON).read_text())
            rep["train_seconds"] = record.get("seconds")
            reports.append(rep)
        if not reports:
            continue
        found[row] = reports
        long = [r["by_length"]["over 2048"] for r in reports]
        if is_multilabel(reports[0]):
            multi.append(
                f"| {row} | {len(reports)} | {_stat([r['micro_f1'] for r in reports])} | "
                f"{_stat([r['macro_f1'] for r in reports])} | "
                f"{_stat([r['subset_accuracy'] for r in reports])} | "
                f"{_stat([x['micro_f1'] for x in long])} ({long[0]['documents']}) | "
                f"{np.mean([r['train_seconds'] for r in reports]):.0f} |"
            )
            continue
        lines.append(
            f"| {row} | {len(reports)} | {_stat([r['accuracy'] for r in reports])} | "
            f"{_stat([r['macro_f1'] for r in reports])} | "
            f"{_stat([x['accuracy'] for x in long])} ({long[0]['documents']}) | "
            f"{np.mean([r['train_seconds'] for r in reports]):.0f} |"
        )
    if multi:
        lines = (lines + [""] if len(lines) > 2 else []) + MULTI_LABEL_HEADER + multi
    return "\n".join(lines), found


def label_sets(report: dict) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``[N, L]`` truth and decisions from a multi-label report's predictions."""
    index = {label: i for i, label in enumerate(report["labels"])}
    rows = report["predictions"]
    truth = np.zeros((len(rows), len(index)), dtype=bool)
    predicted = np.zeros_like(truth)
    for i, p in enumerate(rows):
        truth[i, [index[x] for x in p["labels"]]] = True
        predicted[i, [index[x] for x in p["predicted"]]] = True
    return truth, predicted


def paired_tests(a: list[dict], b: list[dict]) -> list[str]:
    """McNemar and paired bootstrap, seed by seed (same seed, same test documents).
    Multi-label: McNemar on exact label-set matches, bootstrap of the micro-F1 difference."""
    out = []
    for ra, rb in zip(a, b, strict=False):
        if is_multilabel(ra) and is_multilabel(rb):
            truth, pa = label_sets(ra)
            truth_b, pb = label_sets(rb)
            if not np.array_equal(truth, truth_b):
                raise ValueError("paired reports must score the same documents")
            m = mcnemar((truth == pa).all(axis=1), (truth == pb).all(axis=1))
            boot = bootstrap_micro_f1_difference(truth, pa, pb)
            low, high = boot["ci95"]
            out.append(
                f"micro-F1 difference {boot['difference']:+.3f} (95% CI {low:+.3f} .. "
                f"{high:+.3f}); McNemar (exact set) {m['only_a_correct']} vs "
                f"{m['only_b_correct']} discordant, p = {m['p_value']:.3g}"
            )
            continue
        ca = [p["label"] == p["predicted"] for p in ra["predictions"]]
        cb = [p["label"] == p["predicted"] for p in rb["predictions"]]
        m, boot = mcnemar(ca, cb), bootstrap_difference(ca, cb)
        low, high = boot["ci95"]
        out.append(
            f"difference {boot['difference']:+.3f} (95% CI {low:+.3f} .. {high:+.3f}); "
            f"McNemar {m['only_a_correct']} vs {m['only_b_correct']} discordant, "
            f"p = {m['p_value']:.3g}"
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longdoc.accuracy_tables",
        description="Print ACCURACY.md's table (mean ± spread over seeds) from "
        "ROOT/<row>/seed*/test/report.json, and optionally paired tests between two rows.",
    )
    parser.add_argument("root", type=Path, metavar="ROOT", help="e.g. runs/accuracy")
    parser.add_argument("rows", nargs="+", metavar="ROW", help="row folders under ROOT")
    parser.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        help="McNemar and paired bootstrap between rows A and B, seed by seed",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table, found = accuracy_table(args.root, args.rows)
    print(table)
    if args.pair:
        a, b = args.pair
        missing = [name for name in (a, b) if name not in found]
        if missing:
            print(f"--pair: no reports for {', '.join(missing)} among ROW", file=sys.stderr)
            return 0
        print(f"\n{a} vs {b}:")
        for line in paired_tests(found[a], found[b]):
            print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
