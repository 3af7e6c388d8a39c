"""Command line: `mrl STAGE --config FILE [key=value ...]` (also what jobs/*.py call).

Stages: train, tune, embed, build-index, evaluate, serve, pipeline; and `search`, which queries an index
through the service's code without Ray (`mrl search index_dir=outputs/index/latest ids=[7] mode=funnel`), and
`lineage`, which prints and checks the chain behind a deployment, index, embeddings or model
(`mrl lineage target=http://127.0.0.1:8000`; exit 1 when a link is broken), and `promote`, which points the
registry alias the embed stage loads at a model version (`mrl promote model_uri=models:/mrl-fashion-mnist/3`).
The config is loaded and validated before any Ray work starts; a bad value exits with status 2 and a
message naming the field.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from mrl import config as C
from mrl.configio import ConfigError, load_config


def _train(cfg: C.TrainJobConfig) -> Any:
    from mrl.stages.train import run_train  # lazy: cli
    return run_train(cfg)


def _tune(cfg: C.TuneJobConfig) -> Any:
    from mrl.stages.tune import run_tune  # lazy: cli
    return run_tune(cfg)


def _embed(cfg: C.EmbedJobConfig) -> Any:
    from mrl.stages.embed import run_embed  # lazy: cli
    return run_embed(cfg)


def _index(cfg: C.IndexJobConfig) -> Any:
    from mrl.stages.index import run_build_index  # lazy: cli
    return run_build_index(cfg)


def _evaluate(cfg: C.EvaluateJobConfig) -> Any:
    from mrl.stages.evaluate import run_evaluate  # lazy: cli
    return run_evaluate(cfg)


def _serve(cfg: C.ServeJobConfig) -> Any:
    from mrl.runtime import ensure_ray  # lazy: cli
    from mrl.stages.serve import run_serve  # lazy: cli
    ensure_ray(cfg.ray)
    return run_serve(cfg.index_dir, cfg.serve, cfg.mlflow, cfg.output_dir, blocking=cfg.block)


def _search(cfg: C.SearchJobConfig) -> int:
    import json

    from mrl.service.retrieval import RequestError, RetrievalService  # lazy: cli

    try:
        service = RetrievalService.from_path(cfg.index_dir, cfg.serve)
    except (FileNotFoundError, ValueError) as exc:  # no index there, or settings it cannot serve
        print(f"mrl search: {exc}", file=sys.stderr)
        return 2
    for item in cfg.ids:
        try:
            print(json.dumps(service.search({"id": item, "k": cfg.k, "mode": cfg.mode})), flush=True)
        except RequestError as exc:
            print(f"mrl search: id {item}: {exc.detail}", file=sys.stderr)
            return 2
    return 0


def _lineage(cfg: C.LineageJobConfig) -> int:
    from mlflow import MlflowClient

    from mrl.artifacts import tracking  # lazy: cli
    from mrl.artifacts.lineage import trace  # lazy: cli

    uri = tracking.resolve_tracking_uri(cfg.mlflow, cfg.output_dir)
    tracking.setup(cfg.mlflow, cfg.output_dir)
    links = trace(cfg.target, MlflowClient(uri))
    for link in links:
        print(link.line(), flush=True)
    broken = [link for link in links if link.problem]
    if broken:
        print(f"mrl lineage: {len(broken)} broken link(s) in the chain of {cfg.target}", file=sys.stderr)
    return 1 if broken else 0


def _promote(cfg: C.PromoteJobConfig) -> int:
    from mrl.artifacts import tracking  # lazy: cli

    tracking.setup(cfg.mlflow, cfg.output_dir)
    try:
        done = tracking.promote(cfg.model_uri, cfg.alias)
    except Exception as exc:  # unknown model or version
        print(f"mrl promote: {exc}", file=sys.stderr)
        return 2
    print(f"models:/{done['model_name']}@{done['alias']} -> version {done['model_version']} "
          f"(was {done['previous'] or 'unset'})", flush=True)
    return 0


def _pipeline(cfg: C.PipelineConfig) -> Any:
    from mrl.stages.pipeline import run_pipeline  # lazy: cli
    return run_pipeline(cfg)


STAGES: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "train": (C.TrainJobConfig, _train),
    "tune": (C.TuneJobConfig, _tune),
    "embed": (C.EmbedJobConfig, _embed),
    "build-index": (C.IndexJobConfig, _index),
    "evaluate": (C.EvaluateJobConfig, _evaluate),
    "serve": (C.ServeJobConfig, _serve),
    "pipeline": (C.PipelineConfig, _pipeline),
    "search": (C.SearchJobConfig, _search),
    "lineage": (C.LineageJobConfig, _lineage),
    "promote": (C.PromoteJobConfig, _promote),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrl", description="Matryoshka Representation Learning on Ray")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", help="YAML config file (defaults apply without one)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 model.dim=256")
    args = parser.parse_intermixed_args(argv)
    cls, run = STAGES[args.stage]
    try:
        cfg = load_config(cls, args.config, args.overrides)
        C.check_paths(cfg)  # the paths this job reads, on the machine it runs on
    except ConfigError as exc:
        print(f"mrl {args.stage}: config error: {exc}", file=sys.stderr)
        return 2
    result = run(cfg)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
