"""Deterministic image augmentation, used to grow a retrieval database beyond its source dataset.

`expand_ids(n_base, target_rows)` lays out the grown split: row ids 0..n_base-1 are the originals, and id r >= n_base
is an augmented copy of base row r mod n_base. `augment(images, ids, seed)` draws each row's transform from a
counter-based hash of (seed, id), so a row's pixels depend only on its id and the seed, never on batching,
actor count or order: every run of the embed stage writes the same database.

Transforms (each row independently): shift by up to `max_shift` pixels with zero fill, horizontal flip with
probability 1/2, contrast x[0.75, 1.25] and brightness +-25, and, with probability 1/2, a zeroed rectangle of
up to 9x9 pixels (random erasing). Originals (ids < n_base) pass through unchanged.
"""

from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic): a well-mixed 64-bit hash per element."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def uniforms(ids: np.ndarray, seed: int, count: int) -> np.ndarray:
    """`count` independent uniforms in [0, 1) per id, a pure function of (seed, id): (N, count) float64."""
    key = _splitmix64(np.asarray(ids, dtype=np.uint64) ^ _splitmix64(np.full(1, seed, dtype=np.uint64)))
    streams = key[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)
    return (_splitmix64(streams) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def expand_ids(n_base: int, target_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of a split grown from `n_base` rows to `target_rows`, and the base row each one copies."""
    if target_rows < n_base:
        raise ValueError(f"augment_rows={target_rows} is below the split's {n_base} rows")
    ids = np.arange(target_rows, dtype=np.int64)
    return ids, ids % n_base


def augment(images: np.ndarray, ids: np.ndarray, seed: int, n_base: int, max_shift: int = 3) -> np.ndarray:
    """Augmented copies of uint8 images (B, C, H, W) for rows `ids` (B,); rows with id < n_base are unchanged."""
    b, c, h, w = images.shape
    u = uniforms(ids, seed, 10)
    dy = np.floor(u[:, 0] * (2 * max_shift + 1)).astype(np.int64) - max_shift
    dx = np.floor(u[:, 1] * (2 * max_shift + 1)).astype(np.int64) - max_shift
    flip = u[:, 2] < 0.5
    contrast = 0.75 + 0.5 * u[:, 3]
    brightness = 50.0 * u[:, 4] - 25.0
    erase = u[:, 5] < 0.5
    eh, ew = 1 + np.floor(u[:, 6] * 9).astype(np.int64), 1 + np.floor(u[:, 7] * 9).astype(np.int64)
    ey, ex = np.floor(u[:, 8] * h).astype(np.int64), np.floor(u[:, 9] * w).astype(np.int64)

    # source pixel of every output pixel: shift then optional flip; outside the image reads zero
    ys = np.arange(h)[None, :, None] - dy[:, None, None]  # (B, H, 1)
    xs = np.arange(w)[None, None, :] - dx[:, None, None]  # (B, 1, W)
    xs = np.where(flip[:, None, None], w - 1 - xs, xs)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # (B, H, W)
    rows = np.arange(b)[:, None, None]
    moved = images[rows, :, np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)]  # (B, H, W, C)
    moved = np.where(inside[..., None], moved, 0).transpose(0, 3, 1, 2).astype(np.float32)  # (B, C, H, W)
    out = moved * contrast[:, None, None, None] + brightness[:, None, None, None] * (moved > 0)
    yy, xx = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    hole = erase[:, None, None] & (yy >= ey[:, None, None]) & (yy < (ey + eh)[:, None, None]) \
        & (xx >= ex[:, None, None]) & (xx < (ex + ew)[:, None, None])  # (B, H, W)
    out = np.where(hole[:, None], 0.0, out)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    original = np.asarray(ids) < n_base
    out[original] = images[original]
    return out
