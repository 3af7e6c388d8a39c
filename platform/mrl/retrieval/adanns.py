"""AdANNS-style inverted file for nested representations (Rege et al., "AdANNS", NeurIPS 2023, restated).

Its k-means cells are built on one prefix size D_c (cheap clustering); queries pick their `nprobe` nearest
cells with that prefix, and the members of those cells are scored exactly on another prefix size D_s (the
plan's first rerank stage).

Two ways to run it: `candidates` returns the members as a padded set (batched index arithmetic) for the
executor's rerank; `faiss_lists` lays the cells out as a FAISS IVF whose lists hold the members' D_s
prefixes, so that FAISS's preassigned search scores the members in its own kernels, cells chosen on D_c
(the executor uses this when it has the vectors: `mrl.retrieval.engine.CellSource`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrl.retrieval.topk import normalize_prefix

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

    def assignment(self) -> np.ndarray:
        """(N,) the cell of every database position."""
        cells = np.empty(len(self.members), dtype=np.int64)
        cells[self.members] = np.repeat(np.arange(self.nlist, dtype=np.int64), np.diff(self.offsets))
        return cells

    def faiss_quantizer(self):
        """A FAISS inner-product index over the cell centres: the nearest cells of a query's D_c prefix."""
        import faiss

        quantizer = faiss.IndexFlatIP(self.cluster_size)
        quantizer.add(np.ascontiguousarray(self.centroids, dtype=np.float32))
        return quantizer

    def faiss_lists(self, vectors: np.ndarray, size: int, block_rows: int = 1 << 16):
        """A FAISS IVF (inner product) whose list c holds the normalised `size`-prefixes of cell c's members,
        ids = database positions; added in blocks (no full float32 copy of the database). Searched with
        `search_preassigned` on cells chosen by `faiss_quantizer`: its own quantizer is an empty placeholder."""
        import faiss

        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(size), size, self.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.is_trained = True  # nothing to train: the lists are the cells, assigned on D_c
        cells = self.assignment()
        for lo in range(0, len(cells), block_rows):
            x = normalize_prefix(vectors[lo:lo + block_rows], size)
            ids = np.arange(lo, lo + len(x), dtype=np.int64)
            ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(cells[lo:lo + len(x)]))
        return ivf

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
