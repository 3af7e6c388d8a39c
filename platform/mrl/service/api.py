"""The HTTP API's request model: the one place a search request's shape and types are declared.

FastAPI reads it for validation and the OpenAPI page; `RetrievalService.search` validates raw dicts with it
too, so the same checks run with or without HTTP. Range checks that depend on the loaded index (k against
the corpus size, the vector's length against d, which modes it serves) are the service's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_TEXT_CHARS = 4000  # a query longer than this is refused (the model reads at most text.max_tokens tokens)


class Budget(BaseModel):
    """A per-request budget: exactly one of a latency (ms) or a recall target."""

    model_config = ConfigDict(extra="forbid", strict=True)

    latency_ms: FiniteFloat | None = Field(None, gt=0, description="the most accurate calibrated plan whose "
                                                                   "single-query search time (p50) fits")
    recall: FiniteFloat | None = Field(None, gt=0, le=1, description="the fastest calibrated plan that returns at "
                                                                     "least this share of the exact top-k")


class SearchRequest(BaseModel):
    """POST /search: give exactly one of `vector`, `id`, `image` (image models) or `text` (text models). Types are
    strict: a string is not a number, a bool is not an integer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    vector: list[FiniteFloat] | None = Field(None, description="query embedding of length d (raw, any norm); "
                                                               "finite numbers only")
    id: int | None = Field(None, description="id of a corpus item to use as the query")
    image: str | None = Field(None, description="a base64-encoded image (PNG, JPEG, ...), embedded by the model "
                                                "the index was built with (GET /healthz: encoder)")
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                             description="a text query (text models), tokenised and embedded by the model the "
                                         "index was built with, with its own tokenizer (GET /healthz: queries)")
    k: int | None = Field(None, description="results to return, in [1, min(corpus rows, serve.max_k)]; "
                                            "default serve.default_k")
    shortlist_k: int | None = Field(None, description="shortlist length K, in [1, min(corpus rows, "
                                                      "serve.max_shortlist_k)] (raised to k)")
    mode: str | None = Field(None, min_length=1, description="search mode (GET /healthz lists the index's); "
                                                             "default serve.mode (omit it or send null, not \"\")")
    budget: Budget | None = Field(None, description="pick the plan by the index's calibration table instead of "
                                                    "mode / shortlist_k (GET /healthz: budgets)")


class VectorMatrix(BaseModel):
    """Many query vectors as one binary matrix: base64 of the little-endian float32 or float16 values, row by row."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dtype: Literal["float32", "float16"] = Field(..., description="the element type of `data`")
    shape: list[int] = Field(..., min_length=2, max_length=2, description="[queries, d]")
    data: str = Field(..., description="base64 of the rows' little-endian values (queries * d * 4 or 2 bytes)")


class BatchSearchRequest(BaseModel):
    """POST /search with many queries: `queries` (each what a single request accepts) or `vectors` (one binary
    matrix), up to serve.max_batch_queries. `k`, `shortlist_k`, `mode` and `budget` given here apply to every
    query that does not set its own. Each query is answered, or refused, alone."""

    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[dict[str, Any]] | None = Field(None, description="single-query requests (vector, id, image or "
                                                                   "text, with their own k, mode, ...)")
    vectors: VectorMatrix | None = Field(None, description="query vectors as one binary matrix")
    k: int | None = Field(None, description="results per query (default for the batch)")
    shortlist_k: int | None = Field(None, description="shortlist length K (default for the batch)")
    mode: str | None = Field(None, min_length=1, description="search mode (default for the batch)")
    budget: Budget | None = Field(None, description="a budget for every query (default for the batch)")


def _search_kind(body: Any) -> str:
    """Which request a POST /search body is: a batch names `queries` or `vectors`."""
    if isinstance(body, dict):
        return "batch" if "queries" in body or "vectors" in body else "single"
    return "batch" if isinstance(body, BatchSearchRequest) else "single"


SearchBody = Annotated[Annotated[SearchRequest, Tag("single")] | Annotated[BatchSearchRequest, Tag("batch")],
                       Discriminator(_search_kind)]
"""POST /search's body: one query (`SearchRequest`) or many (`BatchSearchRequest`)."""


class EmbeddingsRequest(BaseModel):
    """POST /v1/embeddings, OpenAI's request shape (see `mrl.service.embeddings`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(..., min_length=1, description="the served model: its URI (models:/name/version) or its "
                                                      "name (GET /v1/models)")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="texts or token arrays of the model's own vocabulary (text models), or images as data URLs "
                         "/ base64 (image models): one, or a list of up to serve.max_embed_inputs")
    dimensions: int | None = Field(None, description="the prefix length m, one of the model's trained nesting "
                                                     "sizes (GET /healthz: index.sizes); default d")
    encoding_format: Literal["float", "base64"] = Field("float", description="float: JSON numbers; base64: the "
                                                                             "little-endian float32 bytes")
    user: str | None = Field(None, description="accepted for compatibility, not used")


def validation_detail(exc: ValidationError | Any) -> list[dict[str, Any]]:
    """Pydantic / FastAPI validation errors as JSON-safe dicts (location, message, type), without echoing the
    input back (it may hold NaN or infinity, which JSON cannot carry)."""
    return [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()]
