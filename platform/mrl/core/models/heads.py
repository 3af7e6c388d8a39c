"""Classification heads over nested prefixes z[:m] of a representation z (B, d)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mrl.registry import Registry

HEADS: Registry = Registry("head")


class MRLHead(nn.Module):
    """MRL: an independent linear classifier W_m (C x m) for every size m.

    Args:
        sizes: the nesting list, sorted, last <= dim.
        num_classes: C.
    """

    def __init__(self, sizes: Sequence[int], num_classes: int):
        super().__init__()
        self.sizes = list(sizes)
        self.classifiers = nn.ModuleList(nn.Linear(m, num_classes) for m in self.sizes)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """z: (B, d) -> one (B, C) logit tensor per size."""
        return [clf(z[:, :m]) for m, clf in zip(self.sizes, self.classifiers)]


class MRLEHead(nn.Module):
    """MRL-E: one linear head W (C x d); size m uses its first m columns W[:, :m] and the shared bias.

    Same memory as a single classifier. Args as for `MRLHead`, plus `dim` = d.
    """

    def __init__(self, sizes: Sequence[int], num_classes: int, dim: int):
        super().__init__()
        self.sizes = list(sizes)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """z: (B, d) -> one (B, C) logit tensor per size."""
        w, b = self.classifier.weight, self.classifier.bias  # (C, d), (C,)
        return [z[:, :m] @ w[:, :m].T + b for m in self.sizes]


class NoHead(nn.Module):
    """No classifier: a model trained only through its embeddings (contrastive text models)."""

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return []


def build_head(kind: str, sizes: Sequence[int], num_classes: int, dim: int) -> nn.Module:
    """The head registered as `kind` in `HEADS` (mrl -> MRLHead, mrl_e -> MRLEHead, none -> NoHead)."""
    return HEADS.get(kind)(sizes, num_classes, dim)


@HEADS.register("mrl")
def _mrl(sizes: Sequence[int], num_classes: int, dim: int) -> nn.Module:
    return MRLHead(sizes, num_classes)


@HEADS.register("mrl_e")
def _mrl_e(sizes: Sequence[int], num_classes: int, dim: int) -> nn.Module:
    return MRLEHead(sizes, num_classes, dim)


@HEADS.register("none")
def _none(sizes: Sequence[int], num_classes: int, dim: int) -> nn.Module:
    return NoHead()
