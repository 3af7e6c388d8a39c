"""A split's read tasks as a Ray Data `Datasource`: the training stream is read by Ray Data's own read operator,
one block per read task (`mrl.data.readers.SplitReader.tasks`), each task reading its rows where the data lives
(local disk or object storage) on the worker that runs it.

Why a `Datasource` over the platform's read tasks and not `ray.data.read_parquet` / `read_images`:
- Rows are addressed by their position in the split. Positions are the ids of data without an id column, the
  seeded train/validation split is drawn over them, and an image folder's part opens only its own files. Ray
  Data's readers give a row neither its position across files nor its class directory's label in sorted order.
- Images are decoded and resized by `mrl.data.preprocess.decode_image`, the function the service decodes
  queries with, so training and serving see the same pixels.
The embed stage does not read through Ray Data at all: an actor reads, embeds and writes one unit of rows per
call (`mrl.stages.embed.UnitEmbedder`), so each unit file holds exactly its rows and no pixels pass through the
object store.
Measured (`python benchmarks/embed_throughput.py --storage`, docs/results/embed_storage.md, 2 cores, medians of 3
rounds): streaming the 57,000-row training part of Fashion-MNIST's local shards through this datasource took
1.18 s, `ray.data.read_parquet` of all 60,000 rows of the same shards 2.90 s (0.41x); so reading by position
costs nothing here against Ray Data's own reader.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from mrl.data.formats import DataError, train_val_indices
from mrl.data.readers import TASK_ROWS, SplitReader, read_rows, select_rows, task_positions


class SplitDatasource(Datasource):
    """The rows of `tasks` (read tasks of `reader`), or of the training or validation part of the split among
    them (`part`, the split seeded by `split_seed`), as Ray Data blocks of id, label, image (C, H, W uint8)."""

    def __init__(self, reader: SplitReader, tasks: list[dict[str, Any]], part: str | None = None,
                 val_fraction: float = 0.0, split_seed: int = 0):
        super().__init__()
        self.reader, self.tasks, self.part = reader, tasks, part
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.row_bytes = int(np.prod(reader.shape)) + 16  # uint8 pixels, int64 id and label

    def rows(self, task: dict[str, Any]) -> int:
        """How many rows a task yields (its part's rows only, when a part is asked for)."""
        positions = task_positions(task)
        if self.part is None:
            return len(positions)
        return int(select_rows(positions, self.part, self.reader.n, self.val_fraction, self.split_seed).sum())

    def estimate_inmemory_data_size(self) -> int:
        return sum(self.rows(task) for task in self.tasks) * self.row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
                       ) -> list[ReadTask]:
        """One read task per task of the plan, whatever `parallelism` asks: the plan's tasks are the blocks."""
        read = functools.partial(_read, shape=self.reader.shape, part=self.part, n=self.reader.n,
                                 val_fraction=self.val_fraction, seed=self.split_seed)
        out = []
        for task in self.tasks:
            rows = self.rows(task)
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * self.row_bytes, exec_stats=None,
                                 input_files=tuple(dict.fromkeys(task["paths"])) if task["kind"] == "parquet" else None)
            out.append(ReadTask(functools.partial(read, task), meta, per_task_row_limit=per_task_row_limit))
        return out


def _read(task: dict[str, Any], shape, part, n, val_fraction, seed):
    yield BlockAccessor.batch_to_block(read_rows([task], shape, part, n, val_fraction, seed))


def ray_dataset(reader: SplitReader, part: str | None = None, val_fraction: float = 0.0, split_seed: int = 0,
                order_seed: int = 0, rows_per_task: int = TASK_ROWS):
    """The split, or its training or validation part (the split seeded by `split_seed`), as a Ray Data dataset
    of id, label, image (C, H, W uint8), read by Ray Data's read operator one read task a block
    (`SplitDatasource`), the blocks in an order shuffled with `order_seed`. An image folder's part reads only
    its own files; a part of Parquet shards reads their row groups and keeps its rows."""
    positions = None
    if part is not None and reader.kind == "files":  # open only this part's files
        positions = train_val_indices(reader.n, val_fraction, split_seed)[0 if part == "train" else 1]
    tasks = reader.tasks(rows=rows_per_task, shuffle_seed=order_seed, positions=positions)
    if not tasks:
        raise DataError(f"split {reader.name!r} has no rows")
    source = SplitDatasource(reader, tasks, part, val_fraction, split_seed)
    return ray.data.read_datasource(source, override_num_blocks=len(tasks)).randomize_block_order(seed=order_seed)
