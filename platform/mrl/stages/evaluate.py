"""The evaluate stage: per-size quality of one embed run.

For every size m of the model's nesting list:
- linear top-1: the model's own head for m applied to the test embeddings' prefix z[:m] (models with heads);
- 1-NN accuracy, mAP@k, precision@k, recall@k: exact cosine search of test queries (prefix m, normalised)
  against the train split as database, relevance = same label (the MRL paper's protocol; for WordNet text the
  label is the lexicographer class and the rows are documents); recall@k is logged but not printed (`UNPRINTED`);
- text models also get pair retrieval on the test split: each test query (a definition), embedded now by the
  model, against the test documents, one relevant document each: pair_r@1, pair_r@k, pair_mrr@k; and the
  reverse (documents against definitions): rev_r@k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mrl.artifacts import tracking
from mrl.artifacts.embeddings import read_embeddings
from mrl.artifacts.manifest import read_manifest
from mrl.artifacts.remote import artifact_location, local_copy
from mrl.configio import from_dict, to_dict
from mrl.core.metrics import top1_accuracy
from mrl.core.models.model import head_logits
from mrl.data.config import DataConfig
from mrl.data.sources import source_of
from mrl.plots import pyplot, size_axis
from mrl.retrieval.quality import pair_retrieval_at, retrieval_at
from mrl.stages.config import EvaluateJobConfig
from mrl.stages.stage import stage_run


def evaluate_sizes(model, db_vectors: np.ndarray, db_labels: np.ndarray, q_vectors: np.ndarray,
                   q_labels: np.ndarray, k: int = 10) -> list[dict[str, Any]]:
    """One row of metrics (fractions) per nesting size of `model`.

    Args:
        model: an `MRLModel` (its heads give linear top-1).
        db_vectors, db_labels: database (N, d), (N,).
        q_vectors, q_labels: queries (Q, d), (Q,).
        k: retrieval cut-off for mAP/precision/recall.
    """
    logits = head_logits(model, q_vectors) or [None] * len(model.sizes)  # [] without a head
    return [{"size": m, **({"top1": top1_accuracy(size_logits, q_labels)} if size_logits is not None else {}),
             **retrieval_at(db_vectors, db_labels, q_vectors, q_labels, m, k)}
            for m, size_logits in zip(model.sizes, logits)]


def pair_rows(model, queries: list[str], d_vectors: np.ndarray, sizes: list[int], k: int = 10
              ) -> list[dict[str, float]]:
    """Pair retrieval per size: query texts i (embedded now) against document vectors, relevant = row i; and the
    reverse direction (documents against the queries' vectors)."""

    q_vectors = model.embed_texts(queries)
    rows = []
    for m in sizes:
        forward = pair_retrieval_at(q_vectors, d_vectors, m, k)
        reverse = pair_retrieval_at(d_vectors, q_vectors, m, k)
        rows.append({f"pair_{key}": value for key, value in forward.items()} | {f"rev_r@{k}": reverse[f"r@{k}"]})
    return rows


UNPRINTED = ("recall@",)
"""Metrics logged (MLflow, per_size.csv) but not in the printed table: recall@k of class retrieval divides k hits
by every item of the query's class (~6,000 in Fashion-MNIST's train split), so it reads ~0.17% at best."""


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of per-size metrics, in percent (all but `UNPRINTED`)."""
    keys = [key for key in rows[0] if key != "size" and not key.startswith(UNPRINTED)]
    lines = ["| size | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for row in rows:
        lines.append(f"| {row['size']} | " + " | ".join(f"{100 * row[key]:.2f}" for key in keys) + " |")
    return "\n".join(lines)


def plot_sizes(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy vs representation size (log2 axis), one line per metric."""

    plt = pyplot()
    sizes = [r["size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [key for key in rows[0] if key in ("top1", "nn1") or key.startswith(("map@", "pair_r@"))]:
        ax.plot(sizes, [100 * r[key] for r in rows], marker="o", label=key)
    size_axis(ax, sizes, title, "representation size m (prefix of z)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(job: EvaluateJobConfig) -> dict[str, Any]:
    """The evaluate stage for an `EvaluateJobConfig`; prints and logs the per-size table.

    Returns:
        {"run_id", "rows", "table", "seconds"}.
    """
    import mlflow

    emb_uri = artifact_location(job.embeddings)
    emb = read_manifest(emb_uri, stage="embed")
    missing = [s for s in ("train", "test") if s not in emb["rows"]]
    if missing:
        raise FileNotFoundError(f"embeddings {emb_uri} lack split(s) {missing}; embed both train and test")
    with stage_run("evaluate", job, input_run_id=emb["embed_run_id"], input_uri=emb_uri) as stage:
        model = tracking.load_model(emb["model_uri"])
        tracking.log_params({"evaluate": to_dict(job.evaluate), "embeddings": emb_uri,
                             "model_uri": emb["model_uri"]})
        emb_dir = local_copy(emb_uri, splits=["train", "test"])  # the run itself when local
        _, db_labels, db_vectors = read_embeddings(emb_dir / "train")
        q_ids, q_labels, q_vectors = read_embeddings(emb_dir / "test")
        if job.evaluate.max_queries:
            q_ids, q_labels, q_vectors = (a[:job.evaluate.max_queries] for a in (q_ids, q_labels, q_vectors))
        rows = evaluate_sizes(model, db_vectors, db_labels, q_vectors, q_labels, job.evaluate.k)
        if model.modality == "text":
            texts = _test_queries(emb["data"], q_ids)
            for row, pairs in zip(rows, pair_rows(model, texts, q_vectors, model.sizes, job.evaluate.k)):
                row.update(pairs)
        for row in rows:
            mlflow.log_metrics({key.replace("@", "_at_"): value for key, value in row.items() if key != "size"},
                               step=row["size"])
            mlflow.log_metrics({f"{key.replace('@', '_at_')}_d{row['size']}": value
                                for key, value in row.items() if key != "size"})
        table = format_table(rows)
        out = Path(job.output_dir).resolve() / "eval" / stage.run_id
        out.mkdir(parents=True, exist_ok=True)
        (out / "per_size.md").write_text(table + "\n")
        _write_csv(rows, out / "per_size.csv")
        plot_sizes(rows, out / "accuracy_vs_size.png",
                   f"{emb.get('model_uri')}: {len(q_labels)} queries vs {len(db_labels)} database")
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    print(f"[evaluate] test queries {len(q_labels)}, database {len(db_labels)} (train split), "
          f"model {emb['model_uri']} -- metrics in %:\n{table}", flush=True)
    return {"run_id": stage.run_id, "rows": rows, "table": table, "path": str(out), "seconds": stage.seconds}


def _test_queries(data: dict[str, Any], ids: np.ndarray) -> list[str]:
    """The query texts of the embedded test documents `ids`, from the text data the embed run read (its
    manifest's `data`: the held-out split is `test_split` on disk)."""
    config = from_dict(DataConfig, data)
    split = source_of(config).read_text(config, "test")
    where = {int(i): n for n, i in enumerate(split["id"])}
    missing = [int(i) for i in ids if int(i) not in where]
    if missing:
        raise FileNotFoundError(f"text shards {data['path']} lack test ids {missing[:5]} that the embed run embedded; "
                                "they were rewritten since")
    return [split["query"][where[int(i)]] for i in ids]


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(str(row[key]) for key in keys) for row in rows]
    path.write_text("\n".join(lines) + "\n")
