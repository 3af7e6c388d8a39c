"""`QueryEncoder`: the model an index was built with, embedding query images or texts exactly as the embed
stage embedded the corpus: images through `mrl.data.preprocess` (the same decode, standardisation and forward
pass), texts through the model's own tokenizer (`MRLModel.embed_texts`, the embed stage's call, is the tokenizer
then `MRLModel.embed_ids`), and token ids of that tokenizer's vocabulary as given (OpenAI's token-array inputs).

It loads the model version the index manifest names, never another; `check_encoder` refuses a pairing whose
model, d or nesting list differ, naming both sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrl.artifacts.tracking import load_model
from mrl.core.tokens import PAD_ID
from mrl.data.preprocess import decode_image, embed_images
from mrl.service.config import MAX_IMAGE_PIXELS, QUERY_IMAGE_FORMATS


class QueryEncoder:
    """Query images (bytes) or texts (str) -> embeddings with a registered model, whichever it reads.

    Args:
        model_uri: the model version to load (the index manifest's `model_uri`).
        tracking_uri: the MLflow store that holds it.
        max_pixels: query images with more pixels (read from the header, before decoding) are refused.
        formats: the Pillow formats a query image may have; others are refused unread.
    """

    def __init__(self, model_uri: str, tracking_uri: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
                 formats: tuple[str, ...] = QUERY_IMAGE_FORMATS):
        import mlflow
        import torch

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        torch.set_num_threads(1)
        self.model_uri = model_uri
        self.max_pixels, self.formats = max_pixels, tuple(formats)
        self.model = load_model(model_uri)
        spec = self.model.spec
        self.image_size, self.in_channels = int(spec.get("image_size", 28)), int(spec.get("in_channels", 1))

    def describe(self) -> dict[str, Any]:
        """What the start-up check compares with the index manifest."""
        return {"model_uri": self.model_uri, "dim": self.model.dim, "sizes": list(self.model.sizes),
                "modality": self.model.modality, "image_size": self.image_size, "in_channels": self.in_channels}

    def __call__(self, queries: list[bytes | str | tuple[int, ...]]) -> list[np.ndarray | str]:
        """Encoded images (bytes), texts (str) or token ids (a tuple of ints) -> one (d,) float32 embedding each,
        or the reason it could not be embedded (a query of the kind the model does not read, an unreadable image,
        a token id outside the vocabulary)."""
        return self.embed(queries)[0]

    def embed(self, queries: list[bytes | str | tuple[int, ...]]) -> tuple[list[np.ndarray | str], list[int]]:
        """`__call__`'s embeddings, and the tokens the model read for each query: [CLS], the pieces and [SEP]
        after truncation, or the token ids given (0 for images and refused queries)."""
        kind = self.model.modality
        tokens = [0] * len(queries)
        if kind != "text":
            return self._images([f"this model reads images, not {'text' if isinstance(q, str) else 'token ids'}"
                                 if not isinstance(q, bytes) else q for q in queries]), tokens
        out: list[np.ndarray | str] = ["this model reads text, not images" if isinstance(q, bytes) else ""
                                       for q in queries]
        tokenizer = self.model.tokenizer
        texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
        rows = dict(zip(texts, tokenizer.encode([queries[i] for i in texts]))) if texts else {}  # one batch call
        for i, query in enumerate(queries):
            if isinstance(query, tuple):
                try:
                    rows[i] = token_row(query, tokenizer.vocab_size, tokenizer.max_tokens)
                except ValueError as exc:
                    out[i] = str(exc)
        if rows:
            order = sorted(rows)
            block = np.stack([rows[i] for i in order])
            vectors = self.model.embed_ids(block)  # (B, d): texts and token arrays in one forward pass
            for row, i in enumerate(order):
                out[i], tokens[i] = vectors[row], int(np.count_nonzero(block[row] != PAD_ID))
        return out, tokens

    def _images(self, images: list[bytes | str]) -> list[np.ndarray | str]:
        """Encoded images -> embeddings; a str in the list is an error message passed through."""

        decoded: list[np.ndarray | str] = []
        for data in images:
            if isinstance(data, str):
                decoded.append(data)
                continue
            try:
                decoded.append(decode_image(data, self.image_size, self.in_channels, max_pixels=self.max_pixels,
                                            formats=self.formats))
            except ValueError as exc:
                decoded.append(f"image: {exc}")
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        if good:
            vectors = embed_images(self.model, np.stack([decoded[i] for i in good]))  # (B, d)
            for row, i in enumerate(good):
                decoded[i] = vectors[row]
        return decoded


def token_row(ids: tuple[int, ...], vocab_size: int, max_tokens: int) -> np.ndarray:
    """Token ids given by a client -> the model's (max_tokens,) input row, taken as they are ([CLS] and [SEP] are
    the client's to include, as the tokenizer makes them; 0 is [PAD], masked out) and right-padded.

    Raises:
        ValueError: a sequence longer than the model reads, or an id outside its vocabulary.
    """
    if len(ids) > max_tokens:
        raise ValueError(f"{len(ids)} token ids, above this model's sequence length of {max_tokens}")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside this model's vocabulary (ids 0 to {vocab_size - 1}; token "
                         "arrays are ids of the model's own tokenizer, not another model's)")
    row = np.full(max_tokens, PAD_ID, dtype=np.int64)
    row[:len(ids)] = ids
    return row


def check_encoder(manifest: dict[str, Any], encoder: dict[str, Any]) -> None:
    """Refuse an encoder that is not the index's model: another version, another d, or a nesting list that
    lacks an indexed size.

    Raises:
        ValueError: naming the index's and the encoder's values.
    """
    if manifest.get("model_uri") != encoder["model_uri"]:
        raise ValueError(f"the index was built with model {manifest.get('model_uri')!r} but the encoder loads "
                         f"{encoder['model_uri']!r}")
    if manifest["dim"] != encoder["dim"]:
        raise ValueError(f"the index holds d={manifest['dim']} vectors but the encoder's model makes "
                         f"d={encoder['dim']}")
    index_kind, model_kind = manifest.get("modality", "image"), encoder.get("modality", "image")
    if index_kind != model_kind:
        raise ValueError(f"the index holds {index_kind} embeddings but the encoder's model reads {model_kind}")
    missing = sorted(set(manifest["sizes"]) - set(encoder["sizes"]))
    if missing:
        raise ValueError(f"the index's sizes {manifest['sizes']} include {missing}, which the encoder's nesting "
                         f"list {encoder['sizes']} does not")
