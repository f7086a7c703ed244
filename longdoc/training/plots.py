"""``training.png``: loss, and validation accuracy (multi-label: micro-F1) where there is
validation data, per epoch.

The figure is what one looks at first to judge a run (did the loss move, did validation
peak early); matplotlib is imported only here, and its absence skips the figure.
"""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Draw the history rows of a training run to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    key = next(
        (k for k in ("validation_accuracy", "validation_micro_f1") if any(k in r for r in history)),
        None,
    )
    if key is not None:
        name = key.replace("validation_", "validation ").replace("micro_f1", "micro-F1")
        ax2 = ax.twinx()
        ax2.plot(epochs, [r.get(key) for r in history], "s-", color="C1", label=name)
        ax2.set_ylabel(name)
        ax2.set_ylim(0, 1)
        fig.legend(loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
