"""The seed's loss plot, saved to a file (PDF, PNG or SVG by extension).

It draws on a ``matplotlib.figure.Figure`` of its own and never touches
pyplot, so it needs no display and leaves the process's backend alone (inline
plots in Jupyter stay inline); matplotlib is imported only when a plot is drawn.
"""
from pathlib import Path

from numgpt.errors import UsageError
from numgpt.safe_write import atomic_write

PLOT_FORMATS = (".pdf", ".png", ".svg")


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path="loss-plot.pdf"):
    """Training and validation loss against epochs, with a second x-axis of tokens seen, written
    atomically (numgpt.safe_write: never through a symbolic link)."""
    # matplotlib: heavy, only for drawing
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise UsageError(f"plot file {path} must end in one of {', '.join(PLOT_FORMATS)}")
    fig = Figure(figsize=(5, 3))
    ax1 = fig.subplots()
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()                                  # the same losses against tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)       # invisible: only aligns the ticks
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format=path.suffix.lower()[1:]))
    return path
