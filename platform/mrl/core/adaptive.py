"""Adaptive classification: a cascade over nested sizes that stops at the smallest size whose max-softmax
confidence clears that size's threshold (MRL paper, section 4.2.1).

Thresholds are searched on a held-out split: greedily, from the smallest size up, each size gets the lowest
threshold on a grid that keeps the held-out accuracy at or above a target (the largest size's held-out
accuracy minus an allowed drop). The greedy search is a heuristic: a looser target can spend its slack on
the smallest size and end costlier. `adaptive_curve` therefore sweeps the allowed drop in increasing order
and, at each drop, keeps the cheapest (held-out expected size) thresholds found at that drop or any smaller
one, all of which meet the looser target; the curve's held-out cost never rises with the allowed drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cascade(probs: Sequence[np.ndarray], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Run the cascade.

    Args:
        probs: one (N, C) probability array per size, smallest size first.
        thresholds: one per size; a row stops at size i when max(probs[i]) >= thresholds[i]. The last size
            always stops (its threshold is ignored).

    Returns:
        (predictions (N,), index of the size each row stopped at (N,)).
    """
    if len(probs) != len(thresholds):
        raise ValueError(f"{len(thresholds)} thresholds for {len(probs)} sizes")
    n = probs[0].shape[0]
    stop = np.full(n, len(probs) - 1)
    undecided = np.ones(n, dtype=bool)
    for i, (p, t) in enumerate(zip(probs[:-1], thresholds[:-1])):
        here = undecided & (p.max(axis=1) >= t)
        stop[here] = i
        undecided &= ~here
    stacked = np.stack([p.argmax(axis=1) for p in probs])  # (G, N)
    return stacked[stop, np.arange(n)], stop


def expected_size(stop: np.ndarray, sizes: Sequence[int]) -> float:
    """Mean representation size used: sum over sizes of m x the share of rows stopping at m."""
    return float(np.asarray(sizes)[stop].mean())


def search_thresholds(probs: Sequence[np.ndarray], labels: np.ndarray, max_drop: float = 0.0,
                      grid: Sequence[float] | None = None) -> list[float]:
    """Per-size thresholds on held-out data, greedily from the smallest size: each size gets the lowest grid
    threshold that keeps the cascade's accuracy >= target, given the thresholds already set below it.

    Args:
        probs: held-out (N, C) probabilities per size, smallest first.
        labels: held-out labels (N,).
        max_drop: allowed accuracy drop below the largest size's held-out accuracy (a fraction, e.g. 0.003).
        grid: candidate thresholds (default 0.50 .. 0.9999).

    Returns:
        One threshold per size (the last is 1.0 and ignored by `cascade`).
    """
    grid = sorted(grid if grid is not None else np.concatenate([np.linspace(0.5, 0.99, 50),
                                                                [0.995, 0.999, 0.9995, 0.9999]]))
    target = float((probs[-1].argmax(axis=1) == labels).mean()) - max_drop
    never = 1.0 + 1e-9  # max-softmax never exceeds 1: the row goes on to the next size
    thresholds = [never] * len(probs)
    for i in range(len(probs) - 1):
        for t in grid:  # ascending: the first that keeps the target is the cheapest
            trial = thresholds.copy()
            trial[i] = t
            pred, _ = cascade(probs, trial)
            if (pred == labels).mean() >= target:
                thresholds[i] = t
                break
    thresholds[-1] = 1.0
    return thresholds


def adaptive_curve(val_probs: Sequence[np.ndarray], val_labels: np.ndarray, test_probs: Sequence[np.ndarray],
                   test_labels: np.ndarray, sizes: Sequence[int],
                   drops: Sequence[float] = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
                   grid: Sequence[float] | None = None) -> list[dict]:
    """Thresholds searched on the held-out split for each allowed drop, applied to the test split.

    Drops are taken in increasing order; each point uses the cheapest held-out thresholds found so far (see
    the module docstring), so "val_expected_size" never rises along the curve.

    Returns:
        One dict per drop, in increasing drop: {"max_drop", "thresholds", "accuracy", "expected_size"} (test
        figures) and "val_accuracy", "val_expected_size" (held-out figures of the chosen thresholds).
    """
    points, best = [], None
    for drop in sorted(drops):
        thresholds = search_thresholds(val_probs, val_labels, drop, grid)
        pred, stop = cascade(val_probs, thresholds)
        candidate = (expected_size(stop, sizes), float((pred == val_labels).mean()), thresholds)
        if best is None or candidate[0] < best[0]:
            best = candidate
        val_size, val_acc, chosen = best
        pred, stop = cascade(test_probs, chosen)
        points.append({"max_drop": drop, "thresholds": [round(t, 6) for t in chosen],
                       "accuracy": float((pred == test_labels).mean()), "expected_size": expected_size(stop, sizes),
                       "val_accuracy": val_acc, "val_expected_size": val_size})
    return points
