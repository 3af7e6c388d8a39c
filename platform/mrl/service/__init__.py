"""The retrieval service: `RetrievalService` (a plain class: load an index artifact, validate a request,
answer it) in `mrl.service.retrieval`, its request model in `mrl.service.api`, and the thin Ray Serve
deployment + FastAPI app around it in `mrl.service.app`."""
