"""The retrieval engine (above `mrl.data`): FAISS indexes per prefix size, query plans and the search modes.

- `indexes`: `IndexParams` and `INDEX_KINDS` (flat, hnsw, ivf, ivfpq), built on one L2-normalised prefix.
- `plan` and `modes`: a `QueryPlan` (shortlist, then reranks) and `SEARCH_MODES` (adaptive, funnel, adanns,
  full), each a function of `SearchSettings`.
- `engine`, `store`, `kernels`, `topk`: running a plan: shortlists, exact reranks over stored vectors.
- `adanns`, `calibrate`, `quality`, `sharded`: AdANNS cells, the budget calibration table, recall and mAP, an
  exact merge over shards.
- `config`: `IndexConfig`, `SizeIndexParams`.
"""

__all__ = ["adanns", "calibrate", "config", "engine", "indexes", "kernels", "modes", "plan", "quality", "sharded",
           "store", "topk"]
