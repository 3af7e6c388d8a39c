"""Baselines of the MRL paper on a fixed-feature representation Z (N, d): reduce to m dimensions by
taking the first m features, by PCA (SVD of the centred train features), or by a Gaussian random
projection; then score with a linear probe or retrieval. All pure numpy / torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def first_m(z: np.ndarray, m: int) -> np.ndarray:
    """The first m features (the 'random features' baseline of an ordinary representation)."""
    return np.ascontiguousarray(z[:, :m])


@dataclass(frozen=True)
class PCA:
    """Principal directions of train features: mean (d,), components (d, d) with rows by decreasing variance."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    @classmethod
    def fit(cls, z: np.ndarray) -> "PCA":
        z = np.asarray(z, dtype=np.float64)
        mean = z.mean(axis=0)
        _, s, vt = np.linalg.svd(z - mean, full_matrices=False)  # vt: (min(N, d), d)
        return cls(mean, vt, s**2 / max(1, len(z) - 1))

    def transform(self, z: np.ndarray, m: int) -> np.ndarray:
        """Coordinates of z on the top-m principal directions: (N, m) float32."""
        if not 1 <= m <= self.components.shape[0]:
            raise ValueError(f"m={m} is outside [1, {self.components.shape[0]}]")
        return ((np.asarray(z, dtype=np.float64) - self.mean) @ self.components[:m].T).astype(np.float32)


def gaussian_projection(d: int, m: int, seed: int = 0) -> np.ndarray:
    """A (d, m) Gaussian random projection matrix with N(0, 1/m) entries."""
    return np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(m), size=(d, m)).astype(np.float32)


def linear_probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          num_classes: int, epochs: int = 10, lr: float = 1e-2, batch_size: int = 1024,
                          seed: int = 0) -> float:
    """Test accuracy of a softmax-regression classifier trained on (standardised) train features.

    Adam on mini-batches; features are standardised with train statistics so every reduction gets the
    same optimisation budget.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    xtr = torch.from_numpy(((x_train - mean) / std).astype(np.float32))
    xte = torch.from_numpy(((x_test - mean) / std).astype(np.float32))
    ytr = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    clf = torch.nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    steps = epochs * ((len(xtr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(batch_size):
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = clf(xte).argmax(dim=1).numpy()
    return float((pred == np.asarray(y_test)).mean())
