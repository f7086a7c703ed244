"""The sweep's table, CSV and plot: what `longdoc sweep` prints and leaves on disk.

Kept apart from the sweep itself so that the table a person reads, the CSV a spreadsheet
reads and the figure come from the same rows, and matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = (
    "point",
    "head",
    "max_length",
    "overlap",
    "max_chunks",
    "overflow",
    "strategy",
    "window",
    "seeds",
    "validation_macro_f1",
    "validation_macro_f1_std",
    "validation_accuracy",
    "validation_accuracy_std",
    "validation_micro_f1",
    "validation_micro_f1_std",
    "best_seed",
    "windows",
    "feature_seconds",
    "train_seconds",
)


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per grid point, best first (the columns of the scores the rows have: a
    multi-label sweep has micro-F1 and no accuracy)."""
    columns = [c for c in COLUMNS if not c.startswith("validation_") or c in rows[0]]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def table_text(rows: list[dict], metric: str) -> str:
    """The ranking as a fixed-width table (mean ± std over seeds, on validation data)."""
    multi = "validation_micro_f1" in rows[0]
    first, second = ("micro_f1", "macro_f1") if multi else ("macro_f1", "accuracy")
    names = {"micro_f1": "micro-F1", "macro_f1": "macro-F1", "accuracy": "accuracy"}
    header = (
        f"{'rank':>4}  {'point':<40} {names[first]:>15} {names[second]:>15} "
        f"{'windows':>8} {'train s':>8}"
    )
    lines = [f"validation scores, mean ± std over seeds; ranked by {metric}", header]
    for rank, row in enumerate(rows, 1):
        a = f"{row[f'validation_{first}']:.3f} ± {row[f'validation_{first}_std']:.3f}"
        b = f"{row[f'validation_{second}']:.3f} ± {row[f'validation_{second}_std']:.3f}"
        lines.append(
            f"{rank:>4}  {row['point']:<40} {a:>15} {b:>15} "
            f"{row['windows']:>8} {row['train_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def plot_sweep(rows: list[dict], metric: str, path: Path) -> None:
    """Horizontal bars of the ranking metric per point (error bars: std over seeds), the
    winner on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["point"] for r in rows][::-1]
    values = [r[f"validation_{metric}"] for r in rows][::-1]
    errors = [r[f"validation_{metric}_std"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.35 * len(rows)))
    colors = ["C1" if i == len(rows) - 1 else "C0" for i in range(len(rows))]
    ax.barh(names, values, xerr=errors, color=colors, capsize=3)
    ax.set_xlabel(f"validation {metric.replace('_', '-')} (mean over seeds)")
    ax.set_xlim(0, 1)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("longdoc sweep (winner in orange)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
