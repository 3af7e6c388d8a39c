"""Nesting schedules: which prefix sizes m of a d-dimensional representation are trained.

    >>> log_sizes(512, min_size=8)
    [8, 16, 32, 64, 128, 256, 512]
    >>> uniform_sizes(64, min_size=8, count=4)
    [8, 27, 45, 64]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


class NestingError(ValueError):
    """An invalid nesting list or weight vector; the message says which element and why."""


def log_sizes(dim: int, min_size: int = 8) -> list[int]:
    """Powers of two from `min_size` (rounded up to a power of two) below `dim`, then `dim` itself.

    Args:
        dim: full representation size d.
        min_size: smallest prefix size.

    Returns:
        Sorted sizes, always ending with `dim`.
    """
    if dim < 1:
        raise NestingError(f"dim must be >= 1, got {dim}")
    if not 1 <= min_size <= dim:
        raise NestingError(f"min_size must be in [1, dim={dim}], got {min_size}")
    sizes = []
    m = 1 << max(0, math.ceil(math.log2(min_size)))
    while m < dim:
        sizes.append(m)
        m *= 2
    return sizes + [dim]


def uniform_sizes(dim: int, min_size: int = 8, count: int = 8) -> list[int]:
    """`count` sizes evenly spaced from `min_size` to `dim` inclusive (paper's uniform ablation).

    Args:
        dim: full representation size d.
        min_size: smallest size.
        count: number of sizes (>= 2 unless min_size == dim).

    Returns:
        Sorted distinct sizes, first `min_size`, last `dim`.
    """
    if not 1 <= min_size <= dim:
        raise NestingError(f"min_size must be in [1, dim={dim}], got {min_size}")
    if count < 1 or (count == 1 and min_size != dim):
        raise NestingError(f"count must be >= 2 (or 1 when min_size == dim), got {count}")
    if count > dim - min_size + 1:
        raise NestingError(f"count={count} is more than the {dim - min_size + 1} sizes in [{min_size}, {dim}]")
    if count == 1:
        return [dim]
    step = (dim - min_size) / (count - 1)
    return [round(min_size + i * step) for i in range(count)]


def validate_sizes(sizes: Sequence[int], dim: int) -> list[int]:
    """Check an explicit nesting list: integers in [1, dim], strictly increasing, no duplicates.

    Args:
        sizes: the list.
        dim: full representation size d.

    Returns:
        The sizes as a list of ints.
    """
    sizes = list(sizes)
    if not sizes:
        raise NestingError("the nesting list is empty; give at least one size in [1, dim]")
    for i, m in enumerate(sizes):
        if isinstance(m, bool) or not isinstance(m, numbers.Integral):
            raise NestingError(f"nesting size #{i} is {m!r}, not an integer")
        if not 1 <= m <= dim:
            raise NestingError(f"nesting size #{i} is {m}, outside the accepted range [1, dim={dim}]")
    if len(set(sizes)) != len(sizes):
        dup = sorted({m for m in sizes if sizes.count(m) > 1})
        raise NestingError(f"nesting list {sizes} has duplicate sizes {dup}")
    if sizes != sorted(sizes):
        raise NestingError(f"nesting list {sizes} is not sorted in increasing order")
    return [int(m) for m in sizes]


def validate_weights(weights: Sequence[float] | None, sizes: Sequence[int]) -> list[float]:
    """Relative-importance weights c_m: one non-negative finite number per size (default all 1).

    Args:
        weights: the weights or None.
        sizes: the nesting list they go with.

    Returns:
        A list of floats of len(sizes).
    """
    if weights is None:
        return [1.0] * len(sizes)
    weights = list(weights)
    if len(weights) != len(sizes):
        raise NestingError(
            f"{len(weights)} loss weights given for {len(sizes)} nesting sizes {list(sizes)}; give one per size"
        )
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise NestingError(f"loss weight #{i} (size {sizes[i]}) is {w!r}; weights must be finite and >= 0")
    if sum(weights) == 0:
        raise NestingError("all loss weights are 0; at least one size must be trained")
    return [float(w) for w in weights]
