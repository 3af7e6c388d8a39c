"""The adaptive-retrieval HTTP service's config (`ServeConfig`): default search settings, request limits, API
key, replicas, batching, placement."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from mrl.configio import ConfigError, check, positive, registered
from mrl.retrieval.modes import SEARCH_MODES, SearchSettings
from mrl.retrieval.plan import PlanError, check_stages

# Raster formats Pillow decodes itself (no external program), a query may be allowed to send.
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM"}
QUERY_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # the ones allowed unless serve.image_formats says
MAX_IMAGE_PIXELS = 4096 * 4096  # the largest query image (width x height) unless serve.max_image_pixels says


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """The adaptive-retrieval HTTP service."""

    mode: str = "adaptive"
    """Default search mode, one of `mrl.retrieval.modes.SEARCH_MODES` (a request may name another): adaptive = shortlist K with D_s, rerank with D_r;
    funnel = shortlist, then rerank through `funnel` stages; adanns = members of the `nprobe` nearest AdANNS
    cells scored with D_s, then the funnel (needs index.adanns_size); full = one search of the size-d index."""
    search: SearchSettings = field(default_factory=SearchSettings)
    """The default search settings (D_s, K, D_r, funnel stages, nprobe, ef_search; see
    `mrl.retrieval.modes.SearchSettings`); a request may override them in part."""
    default_k: int = 10
    max_k: int = 100
    """The largest k a request may ask for (422 above it)."""
    max_shortlist_k: int = 2000
    """The largest shortlist K a request may ask for (422 above it): a request cannot make a replica rerank
    the whole corpus."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413 before they are read (a 2048-d vector is about 40 kB of JSON)."""
    max_embed_inputs: int = 256
    """The most inputs one POST /v1/embeddings request may carry (422 above it)."""
    max_batch_queries: int = 256
    """The most queries one POST /search batch may carry (`queries` or `vectors`; 422 above it)."""
    api_key_env: str | None = None
    """Name of an environment variable holding the API key (at least 16 characters); with a key, every route
    but /healthz answers 401, before the body is read, unless the request sends `Authorization: Bearer <key>`,
    and /healthz says only "ok". None (and no api_key_file): no key."""
    api_key_file: str | None = None
    """A file holding the API key (first line), e.g. a mounted secret; never put the key itself in a config."""
    num_replicas: int = 1
    """Replicas when `autoscaling` is null."""
    autoscaling: dict[str, int | float] | None = None
    """Ray Serve autoscaling_config, e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 16};
    null: a fixed `num_replicas`."""
    max_replicas_per_node: int | None = None
    """At most this many search replicas on one node (1: one per node, so a node's loss takes one replica);
    null: Ray Serve places them where it likes."""
    max_ongoing_requests: int = 64
    """Requests a replica holds at once (queued for its batches); at least batch_max_size."""
    batch_max_size: int = 32
    """Ray Serve dynamic batching: concurrent requests are searched together, up to this many at once."""
    batch_wait_ms: float = 0.0
    """How long a batch waits to fill before it runs. 0: it takes the requests that queued while the previous
    batch ran (a lone request pays no wait; measured: 2 ms cost single clients 2.8 ms of p50 for 10% more
    throughput at 32 clients)."""
    encoder_batch_max_size: int = 8
    """The Encoder deployment's dynamic batching: up to this many concurrent calls (each a Retriever batch's
    images or texts) are embedded in one forward pass."""
    gpus_per_replica: float = 0.0
    """GPUs reserved per replica (Ray Serve `num_gpus`)."""
    encoder: bool = True
    """Deploy the index's model beside the retriever so requests may send an image (base64); needs an index
    whose manifest names its model, and the MLflow store that holds it."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where replicas search: auto = the GPU(s) when faiss-gpu is installed and sees one, else the CPU."""
    host: str = "127.0.0.1"
    port: int = 8000
    allow_anonymous: bool = False
    """Serve a host other than loopback without an API key. False: such a config is refused (anybody who can
    reach the port could search and read the corpus)."""
    docs: bool = True
    """Serve the OpenAPI pages (/docs, /redoc, /openapi.json), behind the key when there is one; false: 404."""
    max_image_pixels: int = MAX_IMAGE_PIXELS
    """Query images with more pixels (width x height, read from the header before any decoding) get 422."""
    image_formats: tuple[str, ...] = QUERY_IMAGE_FORMATS
    """The image formats a query may send (Pillow format names); any other is refused without being parsed."""
    request_timeout_s: float | None = 60.0
    """The HTTP proxy answers 408 to a request not finished after this long; null: no limit."""
    max_queued_requests: int = 1000
    """Requests waiting for a search replica beyond its max_ongoing_requests; more get 503 at once (the
    client should back off) instead of an ever longer queue. -1: unbounded."""
    shard_replicas: int = 1
    """For a sharded index (index.shards > 1): replicas of each shard's deployment (2: a shard survives the loss
    of one replica, or of its node with shard_max_replicas_per_node: 1)."""
    shard_max_replicas_per_node: int | None = None
    """At most this many replicas of one shard on one node (1: a node's loss takes one replica of a shard);
    null: Ray Serve places them where it likes (spread by default)."""
    shard_cpus: float = 1.0
    """CPUs reserved by each shard replica (its searches run on one thread)."""
    shard_timeout_s: float = 10.0
    """A shard that has not answered a search within this long is missing for that request."""
    on_missing_shard: Literal["fail", "partial"] = "fail"
    """A request some shard did not answer: fail = 503 naming the shards; partial = the merged answer of the
    shards that did, with "partial": true and the missing shards in the reply's "shards"."""

    def __post_init__(self) -> None:
        positive("default_k", self.default_k)
        registered("mode", self.mode, SEARCH_MODES)
        if self.search.funnel is not None:
            try:
                check_stages(self.search.funnel, after_size=self.search.shortlist_size,
                             after_keep=self.search.shortlist_k)
            except PlanError as exc:
                raise ConfigError(f"search.funnel: {exc}") from None
        check(self.default_k <= self.search.shortlist_k,
               f"default_k ({self.default_k}) must be <= search.shortlist_k ({self.search.shortlist_k})")
        check(self.default_k <= self.max_k, f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        check(self.search.shortlist_k <= self.max_shortlist_k,
               f"search.shortlist_k ({self.search.shortlist_k}) must be <= max_shortlist_k ({self.max_shortlist_k})")
        positive("max_body_bytes", self.max_body_bytes)
        positive("max_embed_inputs", self.max_embed_inputs)
        positive("max_batch_queries", self.max_batch_queries)
        check(self.api_key_env is None or self.api_key_file is None,
               "give at most one of api_key_env and api_key_file")
        check(self.api_key_env is None or bool(self.api_key_env.strip()), "api_key_env must name a variable")
        positive("num_replicas", self.num_replicas)
        positive("max_replicas_per_node", self.max_replicas_per_node, allow_none=True)
        if self.autoscaling is not None:
            known = {"min_replicas", "max_replicas", "target_ongoing_requests", "initial_replicas",
                     "upscale_delay_s", "downscale_delay_s"}
            unknown = sorted(set(self.autoscaling) - known)
            check(not unknown, f"autoscaling keys {unknown} are not accepted; choose from {sorted(known)}")
            lo, hi = self.autoscaling.get("min_replicas", 1), self.autoscaling.get("max_replicas", 1)
            check(0 <= lo <= hi and hi >= 1,
                   f"autoscaling needs 0 <= min_replicas <= max_replicas >= 1, got {lo} and {hi}")
        positive("batch_max_size", self.batch_max_size)
        positive("encoder_batch_max_size", self.encoder_batch_max_size)
        check(0 <= self.batch_wait_ms <= 1000, f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms}")
        check(self.max_ongoing_requests >= self.batch_max_size,
               f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= batch_max_size "
               f"({self.batch_max_size}), or batches never fill")
        check(self.gpus_per_replica >= 0, f"gpus_per_replica must be >= 0, got {self.gpus_per_replica}")
        check(0 < self.port < 65536, f"port must be in [1, 65535], got {self.port}")
        keyed = self.api_key_env is not None or self.api_key_file is not None
        check(keyed or self.allow_anonymous or is_loopback(self.host),
              f"host {self.host!r} serves other machines, and the service has no API key: set serve.api_key_env "
              "or serve.api_key_file, or serve.allow_anonymous: true to serve it open on purpose")
        positive("max_image_pixels", self.max_image_pixels)
        unknown = sorted(set(self.image_formats) - IMAGE_FORMATS)
        check(bool(self.image_formats) and not unknown,
              f"image_formats {list(self.image_formats)} must be a non-empty subset of {sorted(IMAGE_FORMATS)}")
        positive("request_timeout_s", self.request_timeout_s, allow_none=True)
        positive("shard_replicas", self.shard_replicas)
        positive("shard_max_replicas_per_node", self.shard_max_replicas_per_node, allow_none=True)
        check(self.shard_cpus >= 0, f"shard_cpus must be >= 0, got {self.shard_cpus}")
        check(0 < self.shard_timeout_s <= 600, f"shard_timeout_s must be in (0, 600], got {self.shard_timeout_s}")
        check(self.max_queued_requests == -1 or self.max_queued_requests >= 1,
              f"max_queued_requests must be -1 (unbounded) or >= 1, got {self.max_queued_requests}")



def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or name (reachable from this machine only)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
