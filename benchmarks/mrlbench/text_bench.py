"""The MRL comparison on text: contrastively trained text encoders on WordNet (definition -> synset document).

For every seed, trains in this process (through the platform's own training loop, one model at a time):
MRL over the nesting list (e.g. 8, 16, ..., d), one fixed-feature model FF-m for every size m below d (same
encoder and budget, a projection to m, one nesting size), and the non-MRL model FF-d. Then, for every size m:

- MRL: the normalised prefix z[:m] of the MRL model;
- FF-m: its own m-d model (FF-d at m = d);
- FF-d truncated: the first m dimensions of FF-d;
- PCA of FF-d: FF-d projected on its top-m principal directions (fitted on the train-document embeddings);
- BM25 (one row, no size): bm25s over the same texts, its own tokenizer with English stop words.

Metrics: pair retrieval (test definitions -> test documents, query i's one relevant document is row i): R@1,
R@k, MRR@k; class retrieval (test documents -> the train-document database, relevance = same lexicographer
class): 1-NN top-1 and mAP@k. MRL's adaptive retrieval (shortlist K on a small prefix, rerank exactly at d)
runs the service's own plan (`SEARCH_MODES["adaptive"]`) through `SearchEngine.run`, beside exact full-size R@k.

Results go to <results_dir>/<results_name>.{md,csv,json} and two PNG plots, and to MLflow (one run).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl.artifacts import tracking
from mrl.config import (
    DataConfig,
    JobConfig,
    MlflowConfig,
    ModelConfig,
    NestingConfig,
    TrainConfig,
    TrainJobConfig,
    check_modalities,
    check_paths,
)
from mrl.configio import check, positive, to_dict
from mrl.core.metrics import pair_metrics
from mrl.core.reduction import PCA
from mrl.data.sources import load_text_split, prepare_data
from mrl.retrieval.calibrate import candidate_settings, plan_of
from mrl.retrieval.modes import SearchSettings, make_plan
from mrl.retrieval.quality import exact_engine, label_metrics, pair_retrieval_at, retrieval_at
from mrl.stages.train import run_loop
from mrlbench.comparison import aggregate, check_results_name, check_seeds, seed_jobs
from mrlbench.text_report import METRICS, SPARSE, check_targets, plot_metric, write_report


@dataclass(frozen=True, kw_only=True)
class TextTargets:
    """What the benchmark is checked against (the MRL paper's claims restated for text); gaps are fractions,
    e.g. 0.005 = 0.5 points."""

    ff_from: int = 16
    """MRL >= FF-m (pair R@k and class mAP@k), within seed spread, at every size from this one up."""
    truncated_up_to: int = 32
    """FF-d truncated below MRL by at least `truncated_margin` at every size up to this one (below d) ..."""
    truncated_margin: float = 0.02
    """... on pair R@k and class mAP@k."""
    adaptive_gap: float = 0.005
    """Adaptive retrieval (shortlist on a small prefix, rerank at d) within this of exact full-size R@k."""

    def __post_init__(self) -> None:
        positive("targets.ff_from", self.ff_from)
        positive("targets.truncated_up_to", self.truncated_up_to)
        for name in ("truncated_margin", "adaptive_gap"):
            value = getattr(self, name)
            check(0 <= value < 1, f"targets.{name} must be in [0, 1), got {value}")


@dataclass(frozen=True, kw_only=True)
class TextBenchConfig(JobConfig):
    """benchmarks/text.py: MRL against FF-m, truncations and PCA of FF-d, and BM25, on WordNet text pairs.
    Every dense model shares data, encoder, epochs and optimiser; only the representation size and the
    nesting list differ."""

    data: DataConfig = field(default_factory=lambda: DataConfig(source="wordnet", path="outputs/wordnet"))
    """A text source (wordnet or text_parquet). train_limit: train on a seeded sample of that many pairs; test_limit:
    a seeded sample of the test rows (queries and documents of pair retrieval, queries of class retrieval)."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        encoder="bert", dim=128, head="none", nesting=NestingConfig(schedule="log", min_size=8),
        backbone={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}))
    """The MRL model (d = model.dim, sizes = model.nesting); FF-m is the same encoder with dim m, nesting [m]."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, batch_size=128, lr=1e-3))
    """Optimisation of every model (train.seed is replaced by each of `seeds`)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Every model is trained once per seed; tables give mean ± std over seeds (JSON also min / max)."""
    database_limit: int | None = None
    """Class-retrieval database: a seeded sample of this many train-split documents (all train rows, whatever
    data.train_limit, when None)."""
    shortlist_size: int | None = None
    """Adaptive retrieval: the prefix whose exact index shortlists (D_s) ...; None: tuned (with shortlist_k) on
    held-out queries, see `tune_fraction`."""
    shortlist_k: int | None = None
    """... K candidates, reranked exactly at d; None: tuned."""
    tune_fraction: float = 0.5
    """Share of the test queries (a seeded half by default) held out to tune the adaptive shortlist: the cheapest
    (D_s, K) within targets.adaptive_gap of exact full-size R@k on them; the adaptive figures are measured on the
    other queries, against the same documents. The evaluation queries never choose the setting."""
    k: int = 10
    """Cut-off of R@k, MRR@k and mAP@k."""
    threads: int = 2
    """PyTorch and FAISS threads (training, embedding, search)."""
    targets: TextTargets = field(default_factory=TextTargets)
    tuned: str | None = None
    """A text sweep's winner.yaml (e.g. of benchmarks/text_tune_quick.yaml): its nesting weights, InfoNCE
    temperature (and its power over the prefixes) and sizes per step train one more model per seed, MRL-tuned,
    at this benchmark's data and budget (epochs, batch, lr); its nesting sizes must be model.nesting's."""
    results_name: str = "text"
    """Files are named <results_name>.{md,csv,json} and <results_name>_*.png."""
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="text-bench"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_modalities(self.data, self.model)
        sizes = self.model.sizes
        d = self.model.dim
        check(len(sizes) >= 2, f"model.nesting must give at least two sizes below and at d={d}, got {sizes}")
        check_seeds(self.seeds)
        positive("database_limit", self.database_limit, allow_none=True)
        check((self.shortlist_size is None) == (self.shortlist_k is None),
               "give both shortlist_size and shortlist_k, or neither (tuned on held-out queries)")
        check(self.shortlist_size is None or 1 <= self.shortlist_size < d,
               f"shortlist_size must be in [1, d) with d = model.dim = {d}, got {self.shortlist_size}")
        positive("k", self.k)
        check(self.shortlist_k is None or self.shortlist_k >= self.k,
               f"shortlist_k must be >= k={self.k}, got {self.shortlist_k}")
        check(0 < self.tune_fraction < 1, f"tune_fraction must be in (0, 1), got {self.tune_fraction}")
        positive("threads", self.threads)
        check_results_name(self.results_name)

    @property
    def sizes(self) -> list[int]:
        return self.model.sizes


def bench_jobs(cfg: TextBenchConfig, seed: int) -> dict[str, TrainJobConfig]:
    """Every model of one seed in training order (`seed_jobs`), with MRL-tuned right after MRL when `tuned`
    names a sweep's winner."""
    jobs = seed_jobs(cfg, seed)
    if not cfg.tuned:
        return jobs
    mrl = jobs.pop("mrl")
    return {"mrl": mrl, "mrl_tuned": tuned_job(cfg, mrl), **jobs}


def tuned_job(cfg: TextBenchConfig, mrl: TrainJobConfig) -> TrainJobConfig:
    """MRL-tuned's training config: the benchmark's MRL job (data, encoder, epochs, batch, lr, seed) with the
    winner's nesting weights, temperatures and sizes per step.

    Raises:
        ConfigError: `tuned` is not a readable training config, or its nesting sizes are not the benchmark's.
    """
    from mrl.configio import ConfigError, load_config

    path = Path(cfg.tuned)
    if not path.is_file():
        raise ConfigError(f"tuned: {cfg.tuned!r} is not a file; give a sweep's winner.yaml (python tuning/tune.py "
                          "--config benchmarks/text_tune_quick.yaml writes outputs/tune/text-quick/winner.yaml)")
    winner = load_config(TrainJobConfig, path)
    if winner.model.sizes != cfg.sizes:
        raise ConfigError(f"tuned: the winner in {cfg.tuned} trains sizes {winner.model.sizes}, this benchmark "
                          f"{cfg.sizes}; sweep with the benchmark's nesting list (space.schedules, min_sizes)")
    train = dataclasses.replace(mrl.train, temperature=winner.train.temperature,
                                temperature_power=winner.train.temperature_power,
                                sizes_per_step=winner.train.sizes_per_step,
                                full_size_every_step=winner.train.full_size_every_step)
    return dataclasses.replace(mrl, model=dataclasses.replace(mrl.model, nesting=winner.model.nesting), train=train)


# ------------------------------------------------------------------------------------------ models


def train_text_model(job: TrainJobConfig, threads: int):
    """Train in this process (the loop `train_local` runs), keeping the last epoch's metrics; (model, metrics)."""
    import torch

    torch.set_num_threads(threads)
    last: dict[str, float] = {}
    model = run_loop(job, on_epoch=lambda metrics, state: last.update(metrics))
    return model, last


# ------------------------------------------------------------------------------------------ BM25


def bm25_rankings(corpus: list[str], queries: list[str], k: int) -> np.ndarray:
    """BM25 (bm25s, its own tokenizer, English stop words) top-k corpus positions per query: (Q, k) best first,
    -1 where fewer than k documents share a term with the query (bm25s pads with arbitrary zero-score rows)."""
    try:
        import bm25s
    except ImportError as exc:  # an optional dependency: the benchmarks' extra
        raise ImportError('the text benchmark\'s BM25 needs bm25s: pip install "mrl-platform[bench]"') from exc

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    kk = min(k, len(corpus))
    docs, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=kk,
                                      show_progress=False)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    out[:, :kk] = np.where(scores > 0, docs, -1)
    return out


def bm25_pair(queries: list[str], documents: list[str], k: int) -> dict[str, float]:
    """Pair retrieval with BM25: query i's relevant document is documents[i]; {"pair_r1", "pair_rk", "pair_mrr"}."""
    r = pair_metrics(bm25_rankings(documents, queries, k), np.arange(len(queries)), k)
    return {"pair_r1": r["r@1"], "pair_rk": r[f"r@{k}"], "pair_mrr": r[f"mrr@{k}"]}


def bm25_class(db_texts: list[str], db_labels: np.ndarray, q_texts: list[str], q_labels: np.ndarray, k: int
               ) -> dict[str, float]:
    """Class retrieval with BM25 (relevance = same label); {"class_top1", "class_map"}."""
    r = label_metrics(bm25_rankings(db_texts, q_texts, k), q_labels, db_labels, k)
    return {"class_top1": r["nn1"], "class_map": r[f"map@{k}"]}


# ------------------------------------------------------------------------------------------ dense scoring


def dense_row(method: str, seed: int, size: int, q: np.ndarray, docs: np.ndarray, q_docs: np.ndarray,
              db: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray, k: int) -> dict[str, Any]:
    """One result row: pair retrieval (queries q -> docs) and class retrieval (q_docs -> db), exact cosine on the
    normalised prefix `size` of the given vectors."""
    pair = pair_retrieval_at(q, docs, size, k)
    cls = retrieval_at(db, db_labels, q_docs, q_labels, size, k)
    return {"method": method, "seed": seed, "size": size, "pair_r1": pair["r@1"], "pair_rk": pair[f"r@{k}"],
            "pair_mrr": pair[f"mrr@{k}"], "class_top1": cls["nn1"], "class_map": cls[f"map@{k}"]}


def tune_adaptive(q: np.ndarray, docs: np.ndarray, targets: np.ndarray, sizes: list[int], k: int, gap: float
                  ) -> dict[str, Any]:
    """The cheapest adaptive setting (fewest multiply-adds per query) whose pair R@k on these held-out queries is
    within `gap` of exact full-size R@k on them; the most accurate one when none is. Candidates: every prefix in
    `sizes` below d, K in `mrl.retrieval.calibrate.SHORTLIST_FACTORS` x k (within the corpus).

    Args:
        q: tuning queries (Q, d); targets: each one's relevant document row.

    Returns:
        {"shortlist_size", "shortlist_k", "tune_rk", "tune_full_rk", "met"}.
    """
    d = docs.shape[1]
    engine = exact_engine(docs, sizes, device="cpu")
    full = pair_metrics(engine.run(make_plan("full", SearchSettings(), d, k), q).positions, targets, k)[f"r@{k}"]
    tried = []
    for setting in candidate_settings(sizes, d, len(docs), k):
        if setting["mode"] != "adaptive":
            continue
        found = engine.run(plan_of(setting, d, k), q)
        tried.append({"shortlist_size": setting["shortlist_size"], "shortlist_k": setting["shortlist_k"],
                      "tune_rk": pair_metrics(found.positions, targets, k)[f"r@{k}"], "madds": found.madds})
    good = [t for t in tried if t["tune_rk"] >= full - gap]
    best = min(good, key=lambda t: t["madds"]) if good else max(tried, key=lambda t: t["tune_rk"])
    return {"shortlist_size": best["shortlist_size"], "shortlist_k": best["shortlist_k"], "tune_rk": best["tune_rk"],
            "tune_full_rk": full, "met": bool(good)}


def adaptive_pair(q: np.ndarray, docs: np.ndarray, shortlist_size: int, shortlist_k: int, k: int,
                  targets: np.ndarray | None = None) -> dict[str, Any]:
    """MRL adaptive pair retrieval, the service's plan: shortlist K on an exact index of prefix D_s, rerank at d;
    beside exact full-size search. Returns R@1 / R@k / MRR@k of both and their multiply-adds per query.

    Args:
        targets: each query's relevant document row (default: query i -> document i).
    """
    d = docs.shape[1]
    settings = SearchSettings(shortlist_size=shortlist_size, shortlist_k=min(shortlist_k, len(docs)))
    engine = exact_engine(docs, [shortlist_size, d], device="cpu")
    targets = np.arange(len(q)) if targets is None else targets
    out: dict[str, Any] = {"shortlist_size": shortlist_size, "shortlist_k": settings.shortlist_k, "rerank_size": d}
    for mode in ("adaptive", "full"):
        plan = make_plan(mode, settings, d, k)
        engine.check(plan)
        found = engine.run(plan, q)
        r = pair_metrics(found.positions, targets, k)
        out.update({f"{mode}_r1": r["r@1"], f"{mode}_rk": r[f"r@{k}"], f"{mode}_mrr": r[f"mrr@{k}"],
                    f"{mode}_madds": found.madds})
    return out


def _tune_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (held-out for tuning, measured) query rows, each sorted."""
    order = np.random.default_rng(1000 + seed).permutation(n)
    cut = int(round(n * fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


# ------------------------------------------------------------------------------------------ the run


def _database_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Rows of the class-retrieval database: all n, or a seeded sorted sample of `limit` of them."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def run_text_bench(cfg: TextBenchConfig, results_dir: str | Path, command: str = "") -> dict[str, Any]:
    """Train every model of every seed, score every method at every size, aggregate, write the results
    (Markdown, CSV, JSON, plots) into `results_dir` and log them to MLflow. Returns the rows, summary, adaptive
    figures, targets, seconds, files and the MLflow run id."""
    import faiss
    import mlflow

    check_paths(cfg)
    faiss.omp_set_num_threads(cfg.threads)
    command = command or "python benchmarks/text.py"
    started = time.time()
    data = prepare_data(cfg.data, cfg.output_dir)  # shards in place, absolute path: every model reads the same files
    cfg = dataclasses.replace(cfg, data=data)
    train_split = load_text_split(data, "train")
    test = load_text_split(data, "test")
    full_train = load_text_split(dataclasses.replace(data, train_limit=None), "train")
    pick = _database_rows(len(full_train["id"]), cfg.database_limit, data.seed)
    db_texts = [full_train["document"][i] for i in pick]
    db_labels = full_train["label"][pick]
    q_labels = test["label"]
    k, sizes, d = cfg.k, cfg.sizes, cfg.model.dim
    print(f"[text-bench] {len(train_split['id'])} training pairs, {len(test['id'])} test pairs, class database "
          f"{len(pick)} train documents; d={d}, sizes {sizes}, seeds {list(cfg.seeds)}", flush=True)

    tracking.setup(cfg.mlflow, cfg.output_dir)
    with mlflow.start_run(run_name=cfg.results_name, tags={"mrl.stage": "text-bench"}) as run:
        tracking.log_params(to_dict(cfg))
        rows: list[dict[str, Any]] = []
        adaptive: list[dict[str, Any]] = []
        trained: list[dict[str, Any]] = []
        train_seconds = 0.0
        t0 = time.time()
        bm25 = {**bm25_pair(test["query"], test["document"], k),
                **bm25_class(db_texts, db_labels, test["document"], q_labels, k)}
        print(f"[text-bench] BM25: pair R@{k} {100 * bm25['pair_rk']:.2f}, class mAP@{k} "
              f"{100 * bm25['class_map']:.2f} ({time.time() - t0:.0f}s)", flush=True)
        rows += [{"method": "bm25", "seed": seed, "size": SPARSE, **bm25} for seed in cfg.seeds]  # deterministic
        first = bench_jobs(cfg, cfg.seeds[0])  # a bad `tuned` stops here, before any training
        tuned_model = first.get("mrl_tuned")
        total = len(cfg.seeds) * len(first)
        for seed in cfg.seeds:
            for name, job in bench_jobs(cfg, seed).items():
                t0 = time.time()
                model, metrics = train_text_model(job, cfg.threads)
                seconds = time.time() - t0
                train_seconds += seconds
                t1 = time.time()
                zq, zd = model.embed_texts(test["query"]), model.embed_texts(test["document"])
                zdb = model.embed_texts(db_texts)
                embed_seconds = time.time() - t1
                del model
                val = metrics.get("val_top1_full")
                label = {"mrl": "MRL", "mrl_tuned": "MRL-tuned"}.get(
                    name, ("FF-d" if job.model.dim == d else "FF") + f" (m={job.model.dim})")
                trained.append({"model": name, "seed": seed, "train_seconds": seconds,
                                "embed_seconds": embed_seconds, "val_r1": val})
                print(f"[text-bench] {len(trained)}/{total} {label} seed {seed}: trained in {seconds:.0f}s, "
                      f"embedded in {embed_seconds:.0f}s" + ("" if val is None else f", val pair R@1 "
                                                              f"{100 * val:.2f}%")
                      + f" ({time.time() - started:.0f}s elapsed)", flush=True)
                args = (zq, zd, zd, zdb, db_labels, q_labels, k)  # class queries: the test documents
                if name == "mrl_tuned":
                    rows += [dense_row("mrl_tuned", seed, m, *args) for m in sizes]
                    continue
                if name == "mrl":
                    rows += [dense_row("mrl", seed, m, *args) for m in sizes]
                    held, scored = _tune_split(len(zq), cfg.tune_fraction, seed)
                    if cfg.shortlist_size is None:
                        tuned = tune_adaptive(zq[held], zd, held, sizes, k, cfg.targets.adaptive_gap)
                    else:
                        tuned = {"shortlist_size": cfg.shortlist_size, "shortlist_k": cfg.shortlist_k}
                    point = adaptive_pair(zq[scored], zd, tuned["shortlist_size"], tuned["shortlist_k"], k, scored)
                    adaptive.append({"seed": seed, **point, "tuned_on": len(held), "measured_on": len(scored),
                                     "documents": len(zd),
                                     **{key: tuned[key] for key in ("tune_rk", "tune_full_rk") if key in tuned}})
                    print(f"[text-bench]   MRL adaptive (shortlist {point['shortlist_k']} at {point['shortlist_size']} "
                          f"dims, chosen on {len(held)} held-out queries) R@{k} {100 * point['adaptive_rk']:.2f} vs "
                          f"full {100 * point['full_rk']:.2f} on the other {len(scored)}", flush=True)
                    continue
                m = job.model.dim
                rows.append(dense_row("ff", seed, m, *args))
                if m == d:  # FF-d: its truncations and PCA projections at every size
                    rows += [dense_row("ff_trunc", seed, s, *args) for s in sizes]
                    pca = PCA.fit(zdb)
                    for s in sizes:
                        pq, pd = pca.transform(zq, s), pca.transform(zd, s)
                        rows.append(dense_row("ff_pca", seed, s, pq, pd, pd, pca.transform(zdb, s), db_labels,
                                              q_labels, k))
        summary = aggregate(rows, METRICS, extremes=True)
        seconds = time.time() - started
        targets = check_targets(summary, adaptive, sizes, cfg.targets, k)
        meta = {"config": to_dict(cfg), "command": command, "seconds": round(seconds, 1),
                "train_seconds": round(train_seconds, 1), "mlflow_run_id": run.info.run_id,
                "train_rows": len(train_split["id"]), "test_rows": len(test["id"]), "database_rows": len(pick),
                **({"tuned": {"weights": tuned_model.model.weights, "temperature": tuned_model.train.temperature,
                              "temperature_power": tuned_model.train.temperature_power,
                              "sizes_per_step": tuned_model.train.sizes_per_step}} if tuned_model else {})}
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = write_report(out, cfg.results_name, summary, rows, adaptive, targets, trained, meta)
        files.append(plot_metric(summary, "pair_rk", f"Pair retrieval R@{k} (definition -> document)",
                                 out / f"{cfg.results_name}_pair_r{k}.png"))
        files.append(plot_metric(summary, "class_map", f"Class retrieval mAP@{k} (same lexicographer class)",
                                 out / f"{cfg.results_name}_class_map{k}.png"))
        for file in files:
            mlflow.log_artifact(str(file), artifact_path="results")
        metrics_out = {f"{r['method']}_{metric}_" + (SPARSE if r["size"] == SPARSE else f"d{r['size']}"): r[metric]
                       for r in summary for metric in METRICS}
        for key in ("adaptive_rk", "full_rk", "adaptive_mrr", "full_mrr"):
            metrics_out[f"mrl_{key}"] = float(np.mean([p[key] for p in adaptive]))
        metrics_out.update(wall_seconds=seconds, train_seconds=train_seconds,
                           targets_passed=float(sum(t["passed"] for t in targets)))
        mlflow.log_metrics(metrics_out)
    print((out / f"{cfg.results_name}.md").read_text(), flush=True)
    return {"summary": summary, "rows": rows, "adaptive": adaptive, "targets": targets, "models": trained,
            "seconds": seconds, "files": [str(f) for f in files], "run_id": run.info.run_id}
