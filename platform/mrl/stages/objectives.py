"""What one training step optimises and what validation measures, for each kind of model.

The train loop (`mrl.stages.train.run_loop`) is the same for every model; an objective supplies the data of
this rank, the batches of an epoch, the loss of a batch and the per-size validation hits:

- `Classification` (image encoders): labelled images; the Matryoshka loss sums a classification loss of
  every size's head; validation is each head's top-1 accuracy. `StreamedClassification` is the same objective
  with the rows streamed through Ray Data (Ray Train runs); `Classification` holds them in memory (in-process
  training, `train_local`).
- `ContrastivePairs` (text encoders): (query, document) pairs, e.g. a WordNet definition and its synset's
  lemmas and examples; the loss is in-batch InfoNCE on every L2-normalised prefix, summed with the nesting
  weights (`MatryoshkaEmbeddingLoss`); validation is pair recall@1 per size: each validation query against
  the documents of its chunk of `VAL_CHUNK` validation pairs (chunks are fixed, so the figure does not
  depend on the number of workers).

With several workers, a text model's negatives are every worker's batch (`train.negatives: global`, an
all-gather whose gradient reaches each rank's own part: W workers of batch B train exactly as one of batch
W*B), or each rank's own (`local`). `train.sizes_per_step` trains a seeded draw of the nesting sizes per step
(`mrl.core.losses.sample_sizes`); `train.temperature_power` gives each prefix its own InfoNCE temperature
(`mrl.core.losses.prefix_temperatures`).
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np
import torch

from mrl.core.losses import (MatryoshkaEmbeddingLoss, MatryoshkaLoss, gather_across_workers, info_nce,
                             prefix_temperatures, sample_sizes, shrink)
from mrl.core.tokens import trim_padding
from mrl.data.formats import to_float, train_val_indices
from mrl.data.preprocess import standardize
from mrl.data.sources import load_split, load_text_split
from mrl.data.tokenize import train_tokenizer

VAL_CHUNK = 1000


def rank_batches(indices: np.ndarray, rank: int, world: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """This rank's batches of one epoch: a seeded shuffle split round-robin across ranks, cut so every rank
    takes the same number of full batches (DDP's all-reduce needs equal step counts)."""
    order = np.random.default_rng(seed).permutation(indices)
    per_rank = len(order) // world
    mine = order[rank::world][:per_rank]
    steps = per_rank // batch_size
    if steps == 0:
        raise ValueError(f"{len(indices)} training rows give no full batch of {batch_size} on {world} workers; "
                         "lower train.batch_size")
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def bucket_by_length(batches: list[np.ndarray], lengths: np.ndarray, seed: int, window: int = 64
                     ) -> list[np.ndarray]:
    """Regroup an epoch's batches so each holds rows of similar length: within every window of `window`
    batches the rows are sorted by length and cut again into batches of the same sizes, then the batch order is
    shuffled. Each batch is trimmed to its longest row, so this cuts the padding a text model computes on
    (WordNet: median 12 tokens, longest of a random batch of 128 about 45) while every row still comes once."""
    out: list[np.ndarray] = []
    for start in range(0, len(batches), window):
        group = batches[start:start + window]
        rows = np.concatenate(group)
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        out += np.split(rows, np.cumsum([len(b) for b in group])[:-1])
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


class Classification:
    """Labelled images, one classification loss per nesting size (see the module docstring)."""

    metric = "val top-1"
    measures = ("top1",)

    def __init__(self, job, rank: int, world: int, device):
        images, labels = load_split(job.data, job.model, "train")
        self.train_idx, val_idx = train_val_indices(len(labels), job.data.val_fraction, job.data.seed)
        self.val_mine = val_idx[rank::world]
        self.x = torch.from_numpy(to_float(images))  # (N, C, H, W)
        self.y = torch.from_numpy(labels)
        self.criterion = MatryoshkaLoss(job.model.weights, job.train.loss).to(device)
        self.device = device
        self.tokenizer = None

    def batches(self, rank: int, world: int, batch_size: int, seed: int) -> list[np.ndarray]:
        return rank_batches(self.train_idx, rank, world, batch_size, seed)

    def loss(self, model, batch: np.ndarray, step: tuple[int, int] = (0, 0)) -> torch.Tensor:
        xb, yb = self.x[batch].to(self.device), self.y[batch].to(self.device)
        return self.criterion(model(xb), yb)[0]

    def val_hits(self, model, autocast, batch_size: int = 1024) -> tuple[torch.Tensor | None, int]:
        """Correct predictions per size on this rank's validation rows, and how many rows."""
        x, y = self.x[self.val_mine], self.y[self.val_mine]
        correct = None
        with torch.no_grad(), autocast():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size].to(self.device), y[i:i + batch_size].to(self.device)
                hits = torch.stack([(out.argmax(1) == yb).sum() for out in model(xb)])
                correct = hits if correct is None else correct + hits
        return correct, len(x)


class StreamedClassification:
    """`Classification` with its rows streamed through Ray Data instead of held in memory: this rank's shard of
    the training part (`ray.train.get_dataset_shard("train")`, read blocks in a seeded order, rows shuffled in
    windows seeded per epoch: `EpochStream`) and of the validation part ("val"). Batches arrive as uint8 and are
    standardised on the model's device (`mrl.data.preprocess.standardize`, as the embed stage and the service
    do). A worker holds a few blocks and one window, whatever the split's size.

    Args:
        rows: {"train": rows in the training part, "val": rows in the validation part}, counted by the driver
            from metadata; every rank takes (train // world) // batch_size full batches an epoch (Ray Train
            splits datasets into equal shards).
    """

    metric = "val top-1"
    measures = ("top1",)

    def __init__(self, job, rank: int, world: int, device, rows: dict[str, int]):
        import ray.train

        self.train = ray.train.get_dataset_shard("train")
        self.val = ray.train.get_dataset_shard("val") if rows.get("val") else None
        self.rows, self.buffer = rows, job.train.shuffle_buffer
        self.criterion = MatryoshkaLoss(job.model.weights, job.train.loss).to(device)
        self.device = device
        self.tokenizer = None

    def batches(self, rank: int, world: int, batch_size: int, seed: int) -> "EpochStream":
        steps = (self.rows["train"] // world) // batch_size
        if steps == 0:
            raise ValueError(f"{self.rows['train']} training rows give no full batch of {batch_size} on {world} "
                             "workers; lower train.batch_size")
        return EpochStream(self.train, steps, batch_size, min(self.buffer, self.rows["train"] // world), seed)

    def loss(self, model, batch: dict, step: tuple[int, int] = (0, 0)) -> torch.Tensor:
        x = standardize(batch["image"].to(self.device, non_blocking=True))
        return self.criterion(model(x), batch["label"].to(self.device, non_blocking=True))[0]

    def val_hits(self, model, autocast, batch_size: int = 1024) -> tuple[torch.Tensor | None, int]:
        correct, rows = None, 0
        if self.val is None:
            return None, 0
        with torch.no_grad(), autocast():
            for batch in self.val.iter_torch_batches(batch_size=batch_size):
                x, y = standardize(batch["image"].to(self.device)), batch["label"].to(self.device)
                hits = torch.stack([(out.argmax(1) == y).sum() for out in model(x)])
                correct = hits if correct is None else correct + hits
                rows += len(y)
        return correct, rows


class EpochStream:
    """One epoch of a rank's batches from a Ray Data shard: exactly `steps` full batches (every rank takes as
    many, as DDP needs). Rows come in windows of `buffer` rows; each window, with the rows the previous one left
    over, is shuffled with a generator seeded by `seed` and cut into batches. Windows (a few read blocks, in
    their seeded order) are shuffled with numpy in one take each: cheaper than a row-by-row shuffle buffer."""

    def __init__(self, shard, steps: int, batch_size: int, buffer: int, seed: int):
        self.shard, self.steps, self.batch_size, self.buffer, self.seed = shard, steps, batch_size, buffer, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        window = max(self.buffer, self.batch_size)
        held, rows, step = [], 0, 0
        # whole blocks as they arrive (batch_size=None): no re-batching copies inside Ray Data
        blocks = self.shard.iter_batches(batch_size=None, batch_format="numpy")
        for block in itertools.chain(blocks, [None]):  # None: the end, flush what is held
            if block is not None:
                held.append({k: block[k] for k in ("image", "label")})
                rows += len(block["label"])
                if rows < window:
                    continue
            if not held:
                break
            pool = held[0] if len(held) == 1 else {k: np.concatenate([h[k] for h in held]) for k in held[0]}
            order = rng.permutation(len(pool["label"]))
            cut = len(order) - len(order) % self.batch_size
            for i in range(0, cut, self.batch_size):
                if step < self.steps:  # past `steps` (never expected) keep draining: the epoch must end everywhere
                    take = order[i:i + self.batch_size]
                    yield {"image": torch.from_numpy(pool["image"][take]),
                           "label": torch.from_numpy(pool["label"][take])}
                step += 1
            held = [{k: v[order[cut:]] for k, v in pool.items()}] if cut < len(order) else []
            rows = len(order) - cut


class ContrastivePairs:
    """(query, document) text pairs, contrastive Matryoshka loss (see the module docstring).

    The tokenizer is trained on this split's texts (queries and documents of the training rows, validation
    rows included); training is deterministic, so every rank trains the same one. A restored run passes the
    tokenizer it was trained with instead.
    """

    metric = "val pair R@1"
    measures = ("top1", "r10")  # pair R@1 (logged as val_top1_*, the key every objective shares) and R@10

    def __init__(self, job, rank: int, world: int, device, tokenizer=None):
        split = load_text_split(job.data, "train")
        n = len(split["id"])
        text = job.model.text
        self.tokenizer = tokenizer or train_tokenizer(split["query"] + split["document"], text.vocab_size,
                                                      text.max_tokens, text.lowercase)
        self.queries = torch.from_numpy(self.tokenizer.encode(split["query"]))  # (N, T)
        self.documents = torch.from_numpy(self.tokenizer.encode(split["document"]))  # (N, T)
        self.train_idx, val_idx = train_val_indices(n, job.data.val_fraction, job.data.seed)
        chunks = [val_idx[i:i + VAL_CHUNK] for i in range(0, len(val_idx), VAL_CHUNK)]
        self.val_chunks = chunks[rank::world]
        temperatures = prefix_temperatures(job.model.sizes, job.train.temperature, job.train.temperature_power)
        self.criterion = MatryoshkaEmbeddingLoss(job.model.sizes, job.model.weights,
                                                 [partial(info_nce, temperature=t) for t in temperatures]).to(device)
        self.lengths = np.maximum((self.queries != 0).sum(1).numpy(), (self.documents != 0).sum(1).numpy())
        self.device, self.train = device, job.train

    def batches(self, rank: int, world: int, batch_size: int, seed: int) -> list[np.ndarray]:
        return bucket_by_length(rank_batches(self.train_idx, rank, world, batch_size, seed), self.lengths, seed)

    def loss(self, model, batch: np.ndarray, step: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """InfoNCE on every trained prefix; `step` (epoch, step) seeds the sizes a step draws
        (train.sizes_per_step)."""
        ids = trim_padding(torch.cat([self.queries[batch], self.documents[batch]]))  # (2B, T'): one forward
        z = model(ids.to(self.device), embed_only=True)
        queries, documents = z[:len(batch)], z[len(batch):]
        if self.train.negatives == "global":  # every worker's pairs, in rank order; the gradient reaches ours
            queries, documents = gather_across_workers(queries), gather_across_workers(documents)
        active = sample_sizes(len(self.criterion.sizes), self.train.sizes_per_step, (self.train.seed, *step),
                              self.train.full_size_every_step)
        return self.criterion(queries, documents, active)[0]

    def val_hits(self, model, autocast, batch_size: int = 500) -> tuple[torch.Tensor | None, int]:
        """Queries (of this rank's validation chunks) whose own document is the nearest of the chunk, and among
        its 10 nearest, per size: (2, G)."""

        sizes = model.sizes
        hits, rows = None, 0
        with torch.no_grad(), autocast():
            for chunk in self.val_chunks:
                zq, zd = (torch.cat([model(trim_padding(ids[chunk[i:i + batch_size]]).to(self.device),
                                           embed_only=True) for i in range(0, len(chunk), batch_size)]).float()
                          for ids in (self.queries, self.documents))
                target = torch.arange(len(chunk), device=zq.device)
                found = torch.stack([_pair_hits(shrink(zq, m) @ shrink(zd, m).T, target) for m in sizes], dim=1)
                hits = found if hits is None else hits + found
                rows += len(chunk)
        return hits, rows


def _pair_hits(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(R@1 hits, R@10 hits) of queries against their chunk's documents: R@1 the own document is the argmax,
    R@10 fewer than 10 documents score above it."""
    above = (scores > scores.gather(1, target[:, None])).sum(1)
    return torch.stack([(scores.argmax(1) == target).sum(), (above < 10).sum()])


def make_objective(job, rank: int, world: int, device, tokenizer=None, streamed_rows: dict[str, int] | None = None):
    """The objective of `job.model`'s modality: `ContrastivePairs` for text encoders, else `Classification`, or
    `StreamedClassification` inside a Ray Train run given datasets (`streamed_rows`: their row counts)."""
    if streamed_rows is not None and job.model.modality == "image":
        return StreamedClassification(job, rank, world, device, streamed_rows)
    if job.model.modality == "text":
        return ContrastivePairs(job, rank, world, device, tokenizer)
    return Classification(job, rank, world, device)
