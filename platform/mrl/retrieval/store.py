"""The rerank store: full-size vectors kept for exact rescoring of any prefix, and the rerank step."""

from __future__ import annotations

import numpy as np

from mrl.retrieval import kernels
from mrl.retrieval.topk import normalize_prefix, top_k

PAGE_BYTES = 4096
SAVE_BLOCK_ROWS = 1 << 16
RERANK_BLOCK_FLOATS = 1 << 20  # ~4 MiB of float32 candidate rows per block: stays in cache, 2-3x faster than 128 MiB
DEVICE_BLOCK_FLOATS = 1 << 28  # ~1 GiB of float32 candidate rows per block on an accelerator: few, large kernels


class PrefixStore:
    """Full-size vectors kept for exact rescoring of any prefix.

    `vectors` (N, d) may be float16 or float32 and may be a read-only memory map: only candidate rows are
    read. A cosine at prefix m is the dot product of a candidate's first m columns, widened to float32, with the
    unit query prefix, divided by the candidate's own prefix norm. On the CPU, `rerank` computes both in one
    pass over each row (`mrl.retrieval.kernels`, Numba); `score` and the fallback without Numba gather blocks
    of rows with a strided PyTorch `index_select` (far faster than numpy's fancy indexing). On an accelerator
    the rows live on the device and their prefix norms are cached per size (`PrefixStore.rerank`).
    """

    def __init__(self, vectors: np.ndarray, device: str = "cpu"):
        """`device` "cuda" copies the rows to the GPU (gathers and products run there); "cpu" keeps them where
        they are (a memory map stays a memory map)."""
        import warnings

        import torch

        vectors = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        if isinstance(vectors, np.memmap):
            advise_random(vectors)
        if vectors.dtype not in (np.float16, np.float32):
            vectors = vectors.astype(np.float32)
        if not vectors.flags["C_CONTIGUOUS"]:
            vectors = np.ascontiguousarray(vectors)
        self.vectors = vectors
        with warnings.catch_warnings():  # read-only memory maps: torch warns, but nothing here writes
            warnings.simplefilter("ignore", UserWarning)
            self._rows = torch.from_numpy(vectors)
        self.device = torch.device(device)
        if self.device.type != "cpu":
            self._rows = self._rows.to(self.device)
        else:
            kernels.warm_up(vectors.dtype)  # the CPU rerank kernel, loaded before the first query
        self._norms: dict = {}  # prefix size -> (N,) norms, for the device rerank

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def mapped(self) -> bool:
        """Whether the rows are memory-mapped from a file on the CPU (the page cache holds them, not the
        process's own memory)."""
        return self.device.type == "cpu" and isinstance(self.vectors, np.memmap)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def score(self, positions: np.ndarray, unit_queries: np.ndarray, size: int) -> np.ndarray:
        """Cosine at prefix `size` between each query (Q, size), already unit-norm, and its rows (Q, K): (Q, K).

        A zero prefix scores 0.
        """
        import torch

        q, kk = positions.shape
        rows = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)).to(self.device)
        cand = self._rows[:, :size].index_select(0, rows).view(q, kk, size).float()
        unit = torch.from_numpy(np.ascontiguousarray(unit_queries, np.float32)).to(self.device)
        raw = (cand * unit[:, None, :]).sum(-1)  # faster than bmm for these thin batched products
        norms = torch.linalg.vector_norm(cand, dim=-1)
        return torch.where(norms > 0, raw / norms.clamp_min(1e-30), torch.zeros_like(raw)).cpu().numpy()


    def _unit_queries(self, queries: np.ndarray, size: int):
        """The queries' unit prefixes on the device: the raw prefix is copied and normalised there (a host
        normalisation of 1,000 x 2,048 costs about as much as the whole GPU rerank). Zero, tiny or overflowing
        norms (which `normalize_prefix` handles in float64) fall back to the host."""
        import torch

        raw = torch.from_numpy(np.asarray(queries)[:, :size]).to(self.device, torch.float32)
        norms = torch.linalg.vector_norm(raw, dim=1, keepdim=True)
        if bool(((norms < 1e-18) | ~(norms < float("inf"))).any()):
            return torch.from_numpy(normalize_prefix(queries, size)).to(self.device)
        return raw / norms

    def prefix_norms(self, size: int, chunk_rows: int = 1 << 16):
        """(N,) float32 norms of every row's prefix `size`, on the store's device, computed once per size (in
        chunks, from the float32 widening of the rows, as the CPU path computes them) and kept: 4 MB per size for
        a million rows, where reading every candidate row a second time for its norm would cost a full pass."""
        import torch

        if size not in self._norms:
            rows = self._rows[:, :size]
            self._norms[size] = torch.cat([torch.linalg.vector_norm(rows[lo:lo + chunk_rows].float(), dim=1)
                                           for lo in range(0, len(rows), chunk_rows)])
        return self._norms[size]

    def rerank(self, candidates: np.ndarray, queries: np.ndarray, size: int, k: int,
               block_floats: int = DEVICE_BLOCK_FLOATS) -> tuple[np.ndarray, np.ndarray]:
        """`rerank` done where the rows live: the positions and unit queries are copied to the device once,
        every block gathers its candidates' prefixes, widens them to float32 and takes their dot products with
        the queries in one batched product, divides by the rows' cached prefix norms, one top-k with the CPU's
        tie rule (higher score, then lower position) runs there, and one copy brings (Q, k) back.

        Used for accelerator stores (the CPU path's cache-sized blocks cost a host round trip each on a GPU);
        it also runs on the CPU, which is how the tests hold it to the CPU path's results. Products are exact
        float32 (a batched matmul, unless TF32 matmuls are switched on, when an elementwise product is used).
        """
        import torch

        dev = self.device
        cand = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.int64)).to(dev)  # (Q, K)
        unit = self._unit_queries(queries, size)  # (Q, size)
        q, kk = cand.shape
        safe = cand.clamp_min(0)
        norms = self.prefix_norms(size)[safe]  # (Q, K)
        raw = torch.empty((q, kk), dtype=torch.float32, device=dev)
        prefix = self._rows[:, :size]
        exact_matmul = not (dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
        step = max(1, block_floats // max(1, kk * size))
        for lo in range(0, q, step):
            rows = prefix.index_select(0, safe[lo:lo + step].reshape(-1)).view(-1, kk, size).float()
            u = unit[lo:lo + step]
            raw[lo:lo + step] = (torch.bmm(rows, u[:, :, None])[..., 0] if exact_matmul
                                 else (rows * u[:, None, :]).sum(-1))
        scores = torch.where(norms > 0, raw / norms.clamp_min(1e-30), torch.zeros_like(raw))
        scores = torch.where(cand >= 0, scores, torch.full_like(scores, -float("inf")))
        tie = torch.where(cand >= 0, cand, torch.full_like(cand, np.iinfo(np.int64).max))
        by_position = torch.argsort(tie, dim=1, stable=True)
        by_score = torch.argsort(-scores.gather(1, by_position), dim=1, stable=True)[:, :min(k, kk)]
        order = by_position.gather(1, by_score)
        best = scores.gather(1, order)
        positions = torch.where(torch.isfinite(best), cand.gather(1, order), torch.full_like(order, -1))
        return best.cpu().numpy(), positions.cpu().numpy()


def advise_random(mapped: np.memmap) -> None:
    """Tell the kernel a memory-mapped file is read at random (madvise MADV_RANDOM): a candidate row then costs
    the pages it spans, not the kernel's read-ahead window. Reading 4,000 random 4 KB rows of the 1M x 2048
    float16 file with an empty page cache read 1.0 MB of disk per row in 5.3 s without it, 8 KB per row in
    0.8 s with it (2 cores, this project's virtual disk)."""
    import mmap

    handle = getattr(mapped, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)


def save_page_aligned(path, vectors: np.ndarray, dtype=None) -> None:
    """Write (N, d) rows as a .npy file whose data starts on a page boundary (the header padded to 4,096 bytes;
    `np.load` reads it as any .npy), so a row of 4,096 bytes spans one page, not two: a memory-mapped rerank
    then reads one page per float16 row at d = 2048. Rows are converted to `dtype` and written in blocks."""
    from numpy.lib import format as npy

    dtype = np.dtype(dtype or vectors.dtype)
    header = repr({"descr": npy.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(vectors.shape)})
    preamble = npy.MAGIC_PREFIX + bytes([1, 0]) + (PAGE_BYTES - 10).to_bytes(2, "little")
    text = header.ljust(PAGE_BYTES - 10 - 1) + "\n"
    with open(path, "wb") as f:
        f.write(preamble + text.encode("latin1"))
        for lo in range(0, len(vectors), SAVE_BLOCK_ROWS):
            f.write(np.ascontiguousarray(vectors[lo:lo + SAVE_BLOCK_ROWS], dtype=dtype).tobytes())


def as_store(database) -> PrefixStore:
    """A `PrefixStore` as is; an array wrapped in one."""
    return database if isinstance(database, PrefixStore) else PrefixStore(database)


def rerank(candidates: np.ndarray, database, queries: np.ndarray, size: int, k: int, sort: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """Rescore shortlisted database positions exactly with prefix `size` and keep the best k.

    Args:
        candidates: (Q, K) database positions, -1 for an empty slot.
        database: a `PrefixStore`, or (N, >= size) raw vectors (may be a memory map; only candidate rows are read).
        queries: (Q, >= size) raw query vectors.
        size: rerank prefix size D_r.
        k: results kept.
        sort: False keeps the same k candidates unordered (cheaper, for a funnel's intermediate stages).

    Returns:
        (scores (Q, k'), positions (Q, k')), k' = min(k, K); empty slots come last with score -inf, id -1
        (when sorted).
    """
    store = as_store(database)
    if store.device.type != "cpu":
        return store.rerank(candidates, queries, size, k)  # sorted either way
    q_norm = normalize_prefix(queries, size)
    if kernels.available():  # one fused pass over each candidate row
        scores = kernels.prefix_cosines(store.vectors, candidates, q_norm, size)
    else:
        scores = _torch_scores(store, candidates, q_norm, size)
    scores = np.where(candidates >= 0, scores, -np.inf).astype(np.float32)
    tie = np.where(candidates >= 0, candidates, np.iinfo(np.int64).max)
    best_scores, order = top_k(scores, k, ids=tie, sort=sort)
    positions = np.take_along_axis(candidates, order, axis=1)
    return best_scores, np.where(np.isfinite(best_scores), positions, -1)


def _torch_scores(store: PrefixStore, candidates: np.ndarray, q_norm: np.ndarray, size: int) -> np.ndarray:
    """`rerank`'s scores without Numba: PyTorch gathers, widens and scores cache-sized blocks of candidates."""
    q, kk = candidates.shape
    safe = np.where(candidates >= 0, candidates, 0)
    scores = np.empty((q, kk), dtype=np.float32)
    step = max(1, RERANK_BLOCK_FLOATS // max(1, kk * size))  # query rows per block: bounded memory
    width = kk if kk * size <= RERANK_BLOCK_FLOATS else max(1, RERANK_BLOCK_FLOATS // size)  # long shortlists
    for lo in range(0, q, step):  # blocks of many queries each, vectorised within a block
        for c0 in range(0, kk, width):
            scores[lo:lo + step, c0:c0 + width] = store.score(safe[lo:lo + step, c0:c0 + width],
                                                              q_norm[lo:lo + step], size)
    return scores


def torch_device(device: str) -> str:
    """The rerank store's PyTorch device for a cpu | gpu | auto setting (auto: CUDA when PyTorch sees it)."""
    import torch

    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("device is 'gpu' but PyTorch sees no CUDA device")
    return "cuda" if device in ("gpu", "auto") and torch.cuda.is_available() else "cpu"
