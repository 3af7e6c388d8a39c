"""Matplotlib helpers shared by the evaluation and benchmark plots (headless, no work at import)."""

from __future__ import annotations

from collections.abc import Sequence


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def size_axis(ax, sizes: Sequence[int], title: str, xlabel: str = "representation size m") -> None:
    """A log2 x axis ticked at the nesting sizes, percent on y, a title and a light grid."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sizes), [str(s) for s in sizes])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
