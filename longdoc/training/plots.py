"""``training.png``: loss, and validation accuracy where there is validation data, per epoch.

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
    if any("validation_accuracy" in r for r in history):
        ax2 = ax.twinx()
        accuracy = [r.get("validation_accuracy") for r in history]
        ax2.plot(epochs, accuracy, "s-", color="C1", label="validation accuracy")
        ax2.set_ylabel("validation accuracy")
        ax2.set_ylim(0, 1)
        fig.legend(loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
