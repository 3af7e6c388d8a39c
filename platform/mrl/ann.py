"""Approximate search structures built for nested representations.

- `AdannsIVF`: AdANNS-style inverted file. Its k-means cells are built on one prefix size D_c (cheap
  clustering), queries pick their `nprobe` nearest cells with that prefix, and the candidates in those cells
  are scored exactly on another prefix size D_s (Rege et al., "AdANNS", NeurIPS 2023, restated).
- `sharded_search`: several index shards searched separately, their top-k merged exactly.

Everything is batched over queries: candidate gathering is index arithmetic, not a per-query loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrl.search import faiss_search, merge_topk, normalize_prefix, rerank


DEFAULT_NPROBE = 8  # AdANNS cells probed per query unless a search says otherwise


@dataclass(frozen=True)
class AdannsIVF:
    """Cells from k-means on the normalised prefix `cluster_size` of the database.

    Attributes:
        cluster_size: D_c, the prefix the cells are built and probed with.
        centroids: (nlist, D_c) unit-norm cell centres.
        offsets: (nlist + 1,) start of each cell's members in `members` (CSR layout).
        members: (N,) database positions grouped by cell.
    """

    cluster_size: int
    centroids: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @classmethod
    def build(cls, database: np.ndarray, cluster_size: int, nlist: int, seed: int = 0, niter: int = 20) -> "AdannsIVF":
        import faiss

        x = normalize_prefix(database, cluster_size)
        nlist = max(1, min(nlist, len(x)))
        kmeans = faiss.Kmeans(cluster_size, nlist, niter=niter, seed=seed, spherical=True, verbose=False)
        kmeans.train(x)
        _, assign = kmeans.index.search(x, 1)
        cells = assign[:, 0]
        counts = np.bincount(cells, minlength=nlist)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        members = np.argsort(cells, kind="stable").astype(np.int64)  # positions, cell by cell, ascending within
        centroids = normalize_prefix(kmeans.centroids, cluster_size)
        return cls(cluster_size, centroids, offsets, members)

    def save(self, path) -> None:
        """One .npz file: the cells' prefix size, centres and CSR members."""
        np.savez(path, cluster_size=np.int64(self.cluster_size), centroids=self.centroids, offsets=self.offsets,
                 members=self.members)

    @classmethod
    def load(cls, path) -> "AdannsIVF":
        with np.load(path) as f:
            return cls(int(f["cluster_size"]), f["centroids"], f["offsets"], f["members"])

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def candidates(self, queries: np.ndarray, nprobe: int | None = None) -> np.ndarray:
        """Members of each query's `nprobe` nearest cells (None: DEFAULT_NPROBE): (Q, L) positions, padded
        with -1."""
        nprobe = max(1, min(nprobe or DEFAULT_NPROBE, self.nlist))
        sims = normalize_prefix(queries, self.cluster_size) @ self.centroids.T  # (Q, nlist)
        top = np.argpartition(-sims, nprobe - 1, axis=1)[:, :nprobe]  # (Q, nprobe) cells
        counts = np.diff(self.offsets)[top]  # (Q, nprobe) members per chosen cell
        flat_counts = counts.ravel()
        total = int(flat_counts.sum())
        rows = np.repeat(np.arange(len(top)), counts.sum(axis=1))
        # where each chosen cell's members start within its query's row, and within the flat member list
        col_start = np.repeat((np.cumsum(counts, axis=1) - counts).ravel(), flat_counts)
        seg_start = np.repeat(np.cumsum(flat_counts) - flat_counts, flat_counts)
        within = np.arange(total) - seg_start
        src = np.repeat(self.offsets[top].ravel(), flat_counts) + within
        out = np.full((len(top), int(counts.sum(axis=1).max(initial=0))), -1, dtype=np.int64)
        out[rows, col_start + within] = self.members[src]
        return out

    def search(self, database: np.ndarray, queries: np.ndarray, nprobe: int, search_size: int, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Probe cells with D_c, score their members exactly with prefix `search_size` (D_s), keep k."""
        return rerank(self.candidates(queries, nprobe), database, queries, search_size, k)


def sharded_search(shards: list[tuple[object, np.ndarray]], queries: np.ndarray, size: int, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard's FAISS index (built on prefix `size`) and merge their top-k exactly.

    Args:
        shards: (index, ids) pairs; ids (N_i,) map the shard's positions to global ids.

    Returns:
        (scores (Q, k'), global ids (Q, k')), ties by lower id, -1 for empty slots.
    """
    parts = []
    for index, ids in shards:
        scores, positions = faiss_search(index, queries, size, k)
        parts.append((scores, np.where(positions >= 0, np.asarray(ids)[np.maximum(positions, 0)], -1)))
    return merge_topk(parts, k)
