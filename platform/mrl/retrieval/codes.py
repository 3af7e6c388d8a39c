"""Compact codes of a prefix, held in RAM so that shortlists and reranks need not touch the full vectors.

Two codes, each of one prefix z[:m] of every row:

- **binary**: one sign bit per dimension (m / 8 bytes a row), compared by Hamming distance. For an MRL prefix
  the number of differing signs tracks the angle between two vectors (a 2048-d float16 row is 4,096 bytes; its
  binary code 256). FAISS's binary indexes (flat, HNSW, IVF) search these codes as shortlist sources
  (`mrl.retrieval.indexes`, kinds `binary_flat`, `binary_hnsw`, `binary_ivf`); `CodeStore` rescoring
  candidates with them is a rerank stage.
- **int8**: the L2-normalised prefix scaled per dimension into [-127, 127] (m bytes a row). A candidate's score
  is the dot product of the unit query with its dequantised code: the cosine up to the quantisation error.

A rerank stage on codes (`Rerank(size, keep, codes="int8")`) scores every candidate from the `CodeStore` of
that kind and prefix and keeps the best, ties by lower position, as the float rerank does. Scores are "higher
is better" floats in both cases (binary: minus the Hamming distance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrl.retrieval import kernels
from mrl.retrieval.topk import normalize_prefix, top_k

CODE_KINDS = ("binary", "int8")
PRECISION = {"binary": 0, "int8": 1, "float": 2}  # a stage on the same prefix must be more precise than the last
ENCODE_BLOCK_ROWS = 1 << 16
SCALE_SAMPLE_ROWS = 100_000  # rows the int8 per-dimension ranges are measured on
SIGNED_VIEWS = {np.dtype(np.float16): np.int16, np.dtype(np.float32): np.int32}
SCALE_QUANTILE = 0.9999  # of |unit prefix| per dimension: a rare outlier saturates instead of coarsening the rest


def check_code(kind: str, size: int, dim: int) -> None:
    """Rules of a code store: a known kind, 1 <= size <= d, binary sizes a multiple of 8 (whole bytes).

    Raises:
        ValueError: naming the kind or size and the rule.
    """
    if kind not in CODE_KINDS:
        raise ValueError(f"code kind {kind!r} is not accepted; choose one of {list(CODE_KINDS)}")
    if not 1 <= size <= dim:
        raise ValueError(f"{kind} code size {size} is outside [1, d={dim}] of these vectors")
    if kind == "binary" and size % 8:
        raise ValueError(f"binary codes need a prefix size that is a multiple of 8, got {size}")


def binary_codes(vectors: np.ndarray, size: int) -> np.ndarray:
    """Sign bits of the prefix `size` of raw rows (N, >= size): (N, size / 8) uint8, bit j of a row set when
    z_j > 0 (normalising does not change a sign, so none is needed); encoded in blocks (memory maps welcome)."""
    if size % 8:
        raise ValueError(f"binary codes need a prefix size that is a multiple of 8, got {size}")
    out = np.empty((len(vectors), size // 8), dtype=np.uint8)
    for lo in range(0, len(vectors), ENCODE_BLOCK_ROWS):
        block = np.asarray(vectors[lo:lo + ENCODE_BLOCK_ROWS, :size])
        if block.dtype in SIGNED_VIEWS:  # an IEEE float is > 0 exactly when its bits, read as a signed integer, are
            block = block.view(SIGNED_VIEWS[block.dtype])  # (-0.0 is the most negative), far faster for float16
        out[lo:lo + len(block)] = np.packbits(block > 0, axis=1, bitorder="little")
    return out


def int8_scale(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Per-dimension step (size,) float32 of the int8 code of the unit prefix `size`: the `SCALE_QUANTILE` of
    |z_j| over a seeded sample of rows, divided by 127 (a dimension that is 0 everywhere gets step 1)."""
    n = len(vectors)
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:SCALE_SAMPLE_ROWS]) if n > SCALE_SAMPLE_ROWS \
        else slice(None)
    magnitude = np.abs(normalize_prefix(np.asarray(vectors[pick]), size))
    kth = int(SCALE_QUANTILE * (len(magnitude) - 1))  # the quantile's lower neighbour: a partition, not a sort
    top = np.partition(magnitude, kth, axis=0)[kth].astype(np.float32)
    return np.where(top > 0, top / 127, 1).astype(np.float32)


def int8_codes(vectors: np.ndarray, size: int, scale: np.ndarray) -> np.ndarray:
    """int8 codes (N, size) of the unit prefixes: round(u_j / scale_j), clipped to [-127, 127]."""
    out = np.empty((len(vectors), size), dtype=np.int8)
    for lo in range(0, len(vectors), ENCODE_BLOCK_ROWS):
        unit = normalize_prefix(np.asarray(vectors[lo:lo + ENCODE_BLOCK_ROWS]), size)
        out[lo:lo + len(unit)] = np.clip(np.rint(unit / scale), -127, 127)
    return out


class CodeStore:
    """The codes of one kind of every row's prefix `size`, for rerank stages.

    Attributes:
        kind: binary | int8.
        size: the prefix encoded.
        codes: (N, size / 8) uint8 (binary) or (N, size) int8.
        scale: (size,) float32 steps of the int8 code (None for binary).
    """

    def __init__(self, kind: str, size: int, codes: np.ndarray, scale: np.ndarray | None = None):
        check_code(kind, size, size)
        width = size // 8 if kind == "binary" else size
        if codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"{kind} codes of a {size}-prefix are {width} wide, got shape {codes.shape}")
        if kind == "int8" and (scale is None or scale.shape != (size,)):
            raise ValueError(f"int8 codes need a ({size},) scale")
        self.kind, self.size = kind, size
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8 if kind == "binary" else np.int8)
        self.scale = None if scale is None else np.ascontiguousarray(scale, dtype=np.float32)

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str, size: int, seed: int = 0) -> CodeStore:
        """Encode every row of `vectors` (N, d), raw, any float dtype or a memory map."""
        check_code(kind, size, vectors.shape[1])
        if kind == "binary":
            return cls(kind, size, binary_codes(vectors, size))
        scale = int8_scale(vectors, size, seed)
        return cls(kind, size, int8_codes(vectors, size, scale), scale)

    @property
    def name(self) -> str:
        """The artifact's name for it: `<kind>_<size>`, e.g. int8_512."""
        return code_name(self.kind, self.size)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def encode_queries(self, queries: np.ndarray) -> np.ndarray:
        """What a query is compared with: its sign bits (binary) or its unit prefix times the steps (int8)."""
        if self.kind == "binary":
            return binary_codes(queries, self.size)
        return normalize_prefix(queries, self.size) * self.scale

    def scores(self, candidates: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(Q, K) scores of each query's candidate positions (Q, K) (-1: empty, scored -inf): minus the Hamming
        distance (binary) or the dequantised dot product with the unit query (int8)."""
        encoded = self.encode_queries(queries)
        positions = np.ascontiguousarray(candidates, dtype=np.int64)
        if self.kind == "binary":
            raw = -_hamming(self.codes, positions, encoded).astype(np.float32)
        else:
            raw = _int8_dots(self.codes, positions, np.ascontiguousarray(encoded, dtype=np.float32))
        return np.where(positions >= 0, raw, -np.inf).astype(np.float32)

    def rerank(self, candidates: np.ndarray, queries: np.ndarray, k: int, sort: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """Best k candidates by these codes' scores, ties by lower position: (scores, positions) (Q, min(k, K)),
        empty slots last with -inf / -1 (when sorted)."""
        scores = self.scores(candidates, queries)
        tie = np.where(candidates >= 0, candidates, np.iinfo(np.int64).max)
        best, order = top_k(scores, k, ids=tie, sort=sort)
        positions = np.take_along_axis(candidates, order, axis=1)
        return best, np.where(np.isfinite(best), positions, -1)

    def save(self, directory: Path) -> list[str]:
        """Write `<name>.npy` (and `<name>_scale.npy` for int8) under `directory`; returns the file names."""
        np.save(Path(directory) / f"{self.name}.npy", self.codes)
        if self.scale is None:
            return [f"{self.name}.npy"]
        np.save(Path(directory) / f"{self.name}_scale.npy", self.scale)
        return [f"{self.name}.npy", f"{self.name}_scale.npy"]

    @classmethod
    def load(cls, directory: Path, kind: str, size: int) -> CodeStore:
        """Read a store `save` wrote, into memory (codes are what a memory-lean deployment keeps resident)."""
        name = code_name(kind, size)
        codes = np.load(Path(directory) / f"{name}.npy")
        scale = np.load(Path(directory) / f"{name}_scale.npy") if kind == "int8" else None
        return cls(kind, size, codes, scale)


def code_name(kind: str, size: int) -> str:
    return f"{kind}_{size}"


def code_files(kind: str, size: int) -> list[str]:
    """The files a code store of this kind and size is saved as."""
    name = code_name(kind, size)
    return [f"{name}.npy"] + ([f"{name}_scale.npy"] if kind == "int8" else [])


def _hamming(codes: np.ndarray, positions: np.ndarray, query_codes: np.ndarray) -> np.ndarray:
    """(Q, K) int32 Hamming distances between each query's code and its candidates' (a -1 slot gets 0)."""
    if kernels.available():
        return kernels.hamming(codes, positions, query_codes)
    safe = np.where(positions >= 0, positions, 0)
    return np.bitwise_count(codes[safe] ^ query_codes[:, None, :]).sum(-1, dtype=np.int32)


def _int8_dots(codes: np.ndarray, positions: np.ndarray, scaled_queries: np.ndarray) -> np.ndarray:
    """(Q, K) float32 dot products of each scaled query with its candidates' int8 codes (a -1 slot gets 0)."""
    if kernels.available():
        return kernels.int8_dots(codes, positions, scaled_queries)
    safe = np.where(positions >= 0, positions, 0)
    return np.einsum("qkm,qm->qk", codes[safe].astype(np.float32), scaled_queries)
