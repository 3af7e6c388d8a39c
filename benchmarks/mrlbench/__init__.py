"""The benchmarks and studies of the `mrl` library: their configs, runs, target checks and reports.

The scripts beside this package (`benchmarks/*.py`) are thin entry points over it; it imports `mrl`, and nothing
in `mrl` imports it. Modules:

- `comparison`: what the image and text MRL comparisons share: each seed's models, mean ± std over seeds,
  table cells, the "MRL >= FF-m within seed spread" check.
- `reproduce`, `report`: the MRL paper's comparison on images (`benchmarks/reproduce.py`).
- `text_bench`, `text_report`: the MRL comparison on text, BM25 beside it (`benchmarks/text.py`).
- `retrieval_bench`, `retrieval_report`: search configurations against exact search (`benchmarks/retrieval.py`,
  `benchmarks/prefix_recall.py`).
- `embed_bench`, `train_bench`, `cpu_shares`: the embed and train stages against plain loops
  (`benchmarks/embed_throughput.py`, `benchmarks/train_throughput.py`).
- `measure`: the machine line, search timing and recall every retrieval result states.
"""

__all__ = [
    "comparison",
    "cpu_shares",
    "embed_bench",
    "measure",
    "report",
    "reproduce",
    "retrieval_bench",
    "retrieval_report",
    "text_bench",
    "text_report",
    "train_bench",
]
