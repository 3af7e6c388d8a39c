"""The Matryoshka loss: a weighted sum of a per-prefix loss over the nesting list.

    L = sum_m c_m * loss(output_m, target)

For classification, output_m are the logits of the head on z[:m]; for embedding losses, the loss is
computed on each L2-normalised prefix (`shrink`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrl.registry import Registry

# Per-size classification losses, by name (`train.loss`): each maps (logits (B, C), labels (B,)) to a scalar.
LOSSES: Registry = Registry("loss")
LOSSES.register("cross_entropy")(F.cross_entropy)


def shrink(z: torch.Tensor, m: int) -> torch.Tensor:
    """The L2-normalised prefix z[:, :m] of embeddings z (B, d)."""
    return F.normalize(z[..., :m], dim=-1)


def weighted_sum(losses: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * losses[i], with the weights on the losses' device and dtype."""
    stacked = torch.stack(list(losses))  # (G,)
    w = torch.as_tensor(weights, device=stacked.device, dtype=stacked.dtype)
    if w.shape != stacked.shape:
        raise ValueError(f"{w.numel()} weights for {stacked.numel()} losses")
    return (w * stacked).sum()


class MatryoshkaLoss(nn.Module):
    """Sum of `loss_fn(output_m, target)` over sizes, weighted by c_m.

    Args:
        weights: c_m per size.
        loss_fn: per-size loss, or the name of one in `LOSSES` (default cross-entropy).

    Forward returns (total, per_size) where per_size is a detached (G,) tensor for logging.
    """

    def __init__(self, weights: Sequence[float],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str = "cross_entropy"):
        super().__init__()
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)
        self.loss_fn = LOSSES.get(loss_fn) if isinstance(loss_fn, str) else loss_fn

    def forward(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(outputs) != len(self.weights):
            raise ValueError(f"{len(outputs)} outputs for {len(self.weights)} nesting sizes")
        per_size = [self.loss_fn(out, target) for out in outputs]
        return weighted_sum(per_size, self.weights), torch.stack(per_size).detach()


PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MatryoshkaEmbeddingLoss(nn.Module):
    """An embedding loss over pairs (a, b) applied to every L2-normalised prefix and summed with weights.

    Args:
        sizes: the nesting list.
        weights: c_m per size.
        loss_fn: takes normalised (B, m) embeddings a, b and returns a scalar (e.g. `info_nce`); or one such
            function per size (e.g. InfoNCE at each prefix's own temperature, `prefix_temperatures`).
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], loss_fn: PairLoss | Sequence[PairLoss]):
        super().__init__()
        if len(sizes) != len(weights):
            raise ValueError(f"{len(weights)} weights for {len(sizes)} sizes")
        self.sizes = list(sizes)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)
        self.loss_fns = list(loss_fn) if isinstance(loss_fn, Sequence) else [loss_fn] * len(self.sizes)
        if len(self.loss_fns) != len(self.sizes):
            raise ValueError(f"{len(self.loss_fns)} loss functions for {len(sizes)} sizes")

    def forward(self, a: torch.Tensor, b: torch.Tensor, active: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """`active`: positions in the nesting list trained this step (`sample_sizes`; None: all). The total is
        the weighted sum over them, per_size their losses in that order."""
        active = range(len(self.sizes)) if active is None else active
        per_size = [self.loss_fns[i](shrink(a, self.sizes[i]), shrink(b, self.sizes[i])) for i in active]
        return weighted_sum(per_size, self.weights[list(active)]), torch.stack(per_size).detach()


def prefix_temperatures(sizes: Sequence[int], temperature: float, power: float = 0.0) -> list[float]:
    """The InfoNCE temperature of each prefix: temperature * (d / m) ** power, d the largest size. power 0: one
    temperature for all; power > 0 softens the small prefixes' logits (a short normalised prefix spreads its
    cosines wider, and a shared low temperature makes its loss the sharpest of the sum)."""
    d = max(sizes)
    return [temperature * (d / m) ** power for m in sizes]


def sample_sizes(count: int, per_step: int, seed: Sequence[int], keep_last: bool = True) -> list[int]:
    """Positions in a nesting list of `count` sizes that one step trains: `per_step` of them drawn without
    replacement by a generator seeded with `seed` (e.g. (train seed, epoch, step): every rank draws the same,
    and a resumed run the same as an uninterrupted one), the last (d) always among them when `keep_last`.
    `per_step` 0 or >= count: all. Sorted."""
    if per_step <= 0 or per_step >= count:
        return list(range(count))
    rng = np.random.default_rng(list(seed))
    if keep_last:
        return sorted([*rng.choice(count - 1, size=per_step - 1, replace=False).tolist(), count - 1])
    return sorted(rng.choice(count, size=per_step, replace=False).tolist())


def gather_across_workers(x: torch.Tensor) -> torch.Tensor:
    """Every data-parallel worker's `x` (B, ...) stacked in rank order (world * B, ...), when a process group is
    up with several ranks (else `x`). Every rank must pass the same shape. The gradient flows back to each rank's
    own part: the backward pass sums, across ranks, the gradient every rank's loss sends to that part, so with
    DDP (which averages gradients) a loss computed identically on every rank from the gathered batch trains
    exactly as one worker with the whole batch would."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward all-reduces (sums) the whole gradient and keeps this rank's rows. (An
    all-reduce, which every backend has, where a reduce-scatter would move 1/world of the bytes: gloo lacks
    one, and the tensors are one batch of embeddings.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of normalised pairs (a_i, b_i): (B, m), (B, m) -> scalar."""
    logits = a @ b.T / temperature  # (B, B)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
