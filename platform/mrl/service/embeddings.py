"""The OpenAI-compatible embeddings API (`POST /v1/embeddings`), as pure functions the service calls.

A Matryoshka model answers every `dimensions` its nesting list holds from one forward pass: the reply is the
first m coordinates of the model's d-dim representation, L2-normalised (what the index searches with at size m,
and what OpenAI's `dimensions` parameter means). Clients that speak OpenAI's API (the `openai` Python client,
LangChain, LlamaIndex) work unchanged with `base_url` pointed at the service.

    request  {"model", "input": str | [str] | [int] | [[int]], "dimensions": m, "encoding_format": "float" | "base64",
              "user"}
    reply    {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] | "<base64>"}],
              "model", "usage": {"prompt_tokens", "total_tokens"}}

Inputs are texts for a text model, and images for an image model: a data URL (`data:image/png;base64,...`) or
bare base64 of an encoded image (PNG, JPEG, ...), checked like `POST /search`'s images. A text model also takes
token arrays, as OpenAI's API does: one list of ids, or a list of them, in the model's own vocabulary (its
`tokenizer.json`), taken as they are ([CLS] and [SEP] included as its tokenizer makes them). Clients that
tokenise for OpenAI's models before sending (LangChain's `OpenAIEmbeddings` with its default
`check_embedding_ctx_length=True` sends tiktoken ids) must send text instead: ids beyond the vocabulary are
refused, but ids inside it would embed another text. `usage` counts the tokens the model read ([CLS] and [SEP]
included, after truncation to its sequence length; 0 for images). "base64" replies carry the little-endian
float32 bytes of each vector, as OpenAI's do.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np


class EmbeddingsRefused(ValueError):
    """An embeddings request the service refuses: `status` and `detail` (the service maps it to RequestError)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def served_names(model_uri: str | None, model_name: str | None) -> list[str]:
    """The `model` values a request may name: the model version's URI (models:/name/version) and its name."""
    return [name for name in (model_uri, model_name) if name]


def check_model(requested: str, names: list[str]) -> None:
    """404 (OpenAI's model_not_found) unless `requested` is one of the served model's names."""
    if requested not in names:
        raise EmbeddingsRefused(404, f"model {requested!r} is not served here; this service embeds with "
                                     f"{' or '.join(repr(n) for n in names)} (GET /v1/models)")


def check_size(dimensions: int | None, sizes: list[int], dim: int) -> int:
    """The prefix length to return: `dimensions`, which must be one of the trained nesting sizes (422 listing
    them), or d when omitted."""
    if dimensions is None:
        return dim
    if dimensions not in sizes:
        raise EmbeddingsRefused(422, f"dimensions={dimensions} is not one of this model's trained sizes {sizes} "
                                     "(its nesting list: each is a prefix the model was trained to make useful)")
    return dimensions


def as_inputs(given: str | list[str] | list[int] | list[list[int]], modality: str, max_inputs: int,
              max_text_chars: int) -> list[bytes | str | tuple[int, ...]]:
    """The request's inputs as the encoder takes them: texts as they are, token arrays (one list of ints, or a
    list of them) as tuples of ids, images decoded from a data URL or base64 to their encoded bytes. 422 naming
    the input for an empty list, too many inputs, an empty or too long text or token array, token arrays sent to
    an image model, or an image that is not base64. (Token ids are checked against the vocabulary by the encoder,
    which has it.)"""
    if isinstance(given, list) and given and not isinstance(given[0], str):  # token arrays
        if modality != "text":
            raise EmbeddingsRefused(422, "input holds token ids, which only text models read; this model reads "
                                         "images, sent as data URLs or base64")
        arrays = [given] if isinstance(given[0], int) else given
        if len(arrays) > max_inputs:
            raise EmbeddingsRefused(422, f"input holds {len(arrays)} token arrays, above the limit of {max_inputs} "
                                         "(serve.max_embed_inputs); split the request")
        for i, ids in enumerate(arrays):
            if not ids or len(ids) > max_text_chars:
                raise EmbeddingsRefused(422, f"input[{i}] holds {len(ids)} token ids; give 1 to {max_text_chars}")
        return [tuple(ids) for ids in arrays]
    items = [given] if isinstance(given, str) else list(given)
    if not items:
        raise EmbeddingsRefused(422, "input is empty: give a string or a list of 1 to "
                                     f"{max_inputs} strings (serve.max_embed_inputs)")
    if len(items) > max_inputs:
        raise EmbeddingsRefused(422, f"input holds {len(items)} items, above the limit of {max_inputs} "
                                     "(serve.max_embed_inputs); split the request")
    out: list[bytes | str] = []
    for i, item in enumerate(items):
        if not item:
            raise EmbeddingsRefused(422, f"input[{i}] is empty")
        if modality == "text":
            if len(item) > max_text_chars:
                raise EmbeddingsRefused(422, f"input[{i}] has {len(item)} characters, above the limit of "
                                             f"{max_text_chars}")
            out.append(item)
            continue
        out.append(decode_image_input(item, i))
    return out


def decode_image_input(item: str, position: int) -> bytes:
    """An image input (a `data:image/...;base64,` URL or bare base64) -> its encoded bytes; 422 otherwise."""
    data = item
    if item.startswith("data:"):
        header, sep, data = item.partition(",")
        if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise EmbeddingsRefused(422, f"input[{position}] is a data URL but not 'data:image/<type>;base64,...'")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise EmbeddingsRefused(422, f"input[{position}]: this model reads images, sent as a data URL "
                                     "('data:image/png;base64,...') or base64 of the encoded image; this is "
                                     "neither") from None


def prefix_unit(vector: np.ndarray, size: int) -> np.ndarray:
    """The first `size` coordinates of `vector`, L2-normalised (a zero prefix stays zero), as float32."""
    head = np.asarray(vector, dtype=np.float32)[:size]
    norm = float(np.linalg.norm(head))
    return head / norm if norm > 0 else head


def reply(vectors: list[np.ndarray | str], size: int, encoding_format: str, model: str,
          tokens: list[int]) -> dict[str, Any]:
    """The OpenAI-shaped reply for embedded inputs, with `usage` the sum of `tokens` (what the model read for each
    input); an input the encoder could not read (a str in `vectors`: the reason) refuses the request with 422
    naming it."""
    failed = [(i, v) for i, v in enumerate(vectors) if isinstance(v, str)]
    if failed:
        raise EmbeddingsRefused(422, "; ".join(f"input[{i}]: {why}" for i, why in failed))
    data = []
    for i, vector in enumerate(vectors):
        unit = prefix_unit(vector, size)
        value = (base64.b64encode(unit.astype("<f4").tobytes()).decode() if encoding_format == "base64"
                 else unit.tolist())
        data.append({"object": "embedding", "index": i, "embedding": value})
    used = int(sum(tokens))
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": used, "total_tokens": used}}
