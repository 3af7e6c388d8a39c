"""What the search page needs beside the search: the corpus items by id, and the page's own static files.

`CorpusItems` reads an indexed item from the data the index's lineage names, never from a path a request gives:
the index manifest names the embeddings directory it was built from, and that directory's manifest holds the
data config the embed stage read (`data`: source, paths, limits), the model spec (the image shape the rows were
read at) and the augmentation, if any. The index holds the embed run's "train" split, so an item is that split's
row with the item's id, read through the same readers as the embed stage (`mrl.data.sources`): images as the
model saw them (C, H, W uint8, at the model's size; an augmented row rebuilt from its base row and seed), text
rows as {id, label, text}. A row whose label is not the index's says the data changed since the index was built,
and is refused.

`page_asset` returns one of the page's files (`mrl/service/page/`): plain HTML, JS and CSS, no build step.
"""

from __future__ import annotations

import io
import threading
from importlib import resources
from typing import Any

import numpy as np

from mrl.artifacts.manifest import ManifestError, read_manifest
from mrl.configio import ConfigError, from_dict
from mrl.data.augment import augment
from mrl.data.config import DataConfig
from mrl.data.formats import DataError
from mrl.data.sources import load_text_split, open_split

# the embed formats whose manifests hold what the items need (data, model_spec, augment): all of them; no Parquet
# file is read here, so format 1's unlisted files do not matter
EMBED_VERSIONS = (1, 2)
# the page's files, by the name the app serves them under, and their media types (nothing else is served)
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}


class ItemsUnavailable(RuntimeError):
    """The service cannot read its corpus's items here: the lineage names no data, or the data is gone or changed."""


def page_asset(name: str) -> tuple[bytes, str]:
    """The bytes and media type of the page file `name` (one of `PAGE_FILES`).

    Raises:
        KeyError: not one of the page's files.
    """
    media_type = PAGE_FILES[name]
    return (resources.files("mrl.service") / "page" / name).read_bytes(), media_type


class CorpusItems:
    """The indexed items of one index, read from the data its lineage names.

    Args:
        manifest: the index manifest (its `embeddings` entry leads to the data).

    Raises:
        ItemsUnavailable: the manifest names no embeddings directory, or that directory's manifest is missing,
            of another stage, or names data this machine does not have.
    """

    def __init__(self, manifest: dict[str, Any]):
        embeddings = manifest.get("embeddings")
        if not embeddings:
            raise ItemsUnavailable("the index manifest names no embeddings directory, so the service cannot tell "
                                   "which data its items come from (indexes built by the index stage name one)")
        try:
            embed = read_manifest(embeddings, stage="embed", versions=EMBED_VERSIONS)
            self.data = from_dict(DataConfig, embed["data"], prefix="data.")
        except (FileNotFoundError, ManifestError, ConfigError, KeyError) as exc:
            raise ItemsUnavailable(f"the index's embeddings {embeddings}: {exc}") from None
        self.modality = self.data.modality
        spec = embed.get("model_spec") or {}
        size = int(spec.get("image_size", 28))
        self.shape = (int(spec.get("in_channels", 1)), size, size)  # (C, H, W) the embed stage read rows at
        self.augment = embed.get("augment")  # {"rows", "seed"} when the train split was grown by augmentation
        self._lock = threading.Lock()
        self._reader = self._text = self._positions = None

    def read(self, item_id: int, label: int) -> dict[str, Any]:
        """Item `item_id`, whose label in the index is `label`.

        Returns:
            text data: {"id", "label", "text"}; images: {"id", "label", "png"} (PNG bytes of the (C, H, W) pixels).

        Raises:
            ItemsUnavailable: the data cannot be read here, lacks the id, or holds another label for it.
        """
        try:
            found_label, item = self._text_row(item_id) if self.modality == "text" else self._image_row(item_id)
        except (DataError, ConfigError, OSError, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid
            raise ItemsUnavailable(f"the corpus's {self.data.source} data at {self.data.root}: {exc}") from None
        if found_label != label:
            raise ItemsUnavailable(f"item {item_id} has label {found_label} in the {self.data.source} data at "
                                   f"{self.data.root} but {label} in the index: the data changed since the index "
                                   "was built")
        return {"id": item_id, "label": label, **item}

    def _text_row(self, item_id: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self._text is None:  # the split is read whole once (the embed stage read it the same way)
                self._text = load_text_split(self.data, "train")
        rows = self._text
        at = int(np.searchsorted(rows["id"], item_id))
        if at >= len(rows["id"]) or rows["id"][at] != item_id:
            raise DataError(f"no row with id {item_id} in its train split")
        return int(rows["label"][at]), {"text": rows["document"][at]}

    def _image_row(self, item_id: int) -> tuple[int, dict[str, Any]]:
        reader = self._open()
        position = self._position(reader, item_id)
        table = reader.read(position, position + 1)
        pixels = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        image = pixels.reshape((1, *self.shape)).astype(np.uint8)  # (1, C, H, W)
        if self.augment is not None and item_id >= reader.n:  # an augmented copy of base row id % n
            image = augment(image, np.array([item_id]), int(self.augment["seed"]), reader.n)
        return int(table.column("label")[0].as_py()), {"png": png_bytes(image[0])}

    def _open(self):
        with self._lock:
            if self._reader is None:  # metadata only: shard footers or an image folder's file list
                self._reader = open_split(self.data, self.shape, "train")
            return self._reader

    def _position(self, reader, item_id: int) -> int:
        """The split position of `item_id`: ids are positions, or the data's id column, or (augmented) id % n."""
        if self.augment is not None:
            if not 0 <= item_id < int(self.augment["rows"]):
                raise DataError(f"id {item_id} is outside its augmented train split of {self.augment['rows']} rows")
            return item_id % reader.n
        if not reader.has_id:
            if not 0 <= item_id < reader.n:
                raise DataError(f"id {item_id} is outside its train split of {reader.n} rows")
            return item_id
        with self._lock:
            if self._positions is None:  # (sorted ids, their positions), from the id columns alone
                ids = reader.ids()
                order = np.argsort(ids, kind="stable")
                self._positions = ids[order], order
        ids, order = self._positions
        at = int(np.searchsorted(ids, item_id))
        if at >= len(ids) or ids[at] != item_id:
            raise DataError(f"no row with id {item_id} in its train split")
        return int(order[at])


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) pixels, C = 1 or 3 -> PNG bytes."""
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG")
    return out.getvalue()

