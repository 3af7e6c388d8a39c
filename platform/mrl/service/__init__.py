"""The retrieval service (above `mrl.artifacts`): `RetrievalService` (a plain class: load an index artifact,
validate a request, answer it) in `retrieval`, its request model in `api`, the query encoder in `encoder`, the
thin Ray Serve deployment + FastAPI app around them in `app`, and `ServeConfig` in `config`."""

__all__ = ["api", "app", "config", "encoder", "retrieval"]
