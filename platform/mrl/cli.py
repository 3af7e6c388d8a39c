"""Command line: `mrl STAGE --config FILE [key=value ...]` (also what jobs/*.py call).

Stages: train, tune, embed, index, evaluate, serve, pipeline; and `search`, which queries an index
through the service's code without Ray (`mrl search index_dir=outputs/index/latest ids=[7] mode=funnel`), and
`lineage`, which prints and checks the chain behind a deployment, index, embeddings or model
(`mrl lineage target=http://127.0.0.1:8000 api_key_env=MRL_API_KEY`; exit 1 when a link is broken), and
`promote`, which points the registry alias the embed stage loads at a model version
(`mrl promote model_uri=models:/mrl-fashion-mnist/3`).
The config is loaded and validated before any Ray work starts; a bad value exits with status 2 and a
message naming the field. A stage prints its own lines (progress, tables, where things are) and actionable
warnings; the rest of Ray's, MLflow's and the workers' output goes to <output_dir>/logs/<stage>-<time>.log, whose
path it prints first. `--verbose` (or log_level=debug) prints everything instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from typing import Any, Callable

from mrl import config as C
from mrl.artifacts import tracking
from mrl.artifacts.datasets import digest_cache
from mrl.artifacts.lineage import trace
from mrl.configio import ConfigError, load_config
from mrl.runtime import captured_output


def _stage(name: str) -> Callable[[Any], Any]:
    """The `run(job)` of stage module `mrl.stages.<name>`, imported when the command runs: each command loads
    only its own stage (torch, Ray, MLflow), so `mrl --help` and config errors answer at once."""
    return importlib.import_module(f"mrl.stages.{name}").run


def _search(cfg: C.SearchJobConfig) -> int:
    from mrl.service.retrieval import RequestError, RetrievalService  # lazy: cli; faiss and torch, for search alone

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

    key = os.environ.get(cfg.api_key_env, "").strip() if cfg.api_key_env else None
    if cfg.api_key_env and not key:
        print(f"mrl lineage: api_key_env names {cfg.api_key_env}, which is not set (or empty) here: export the "
              "service's API key in it", file=sys.stderr)
        return 2
    uri = tracking.resolve_tracking_uri(cfg.mlflow, cfg.output_dir)
    tracking.setup(cfg.mlflow, cfg.output_dir)
    links = trace(cfg.target, MlflowClient(uri), None if cfg.rehash else digest_cache(cfg.output_dir), key)
    for link in links:
        print(link.line(), flush=True)
    broken = [link for link in links if link.problem]
    if broken:
        print(f"mrl lineage: {len(broken)} broken link(s) in the chain of {cfg.target}", file=sys.stderr)
    return 1 if broken else 0


def _promote(cfg: C.PromoteJobConfig) -> int:
    tracking.setup(cfg.mlflow, cfg.output_dir)
    try:
        done = tracking.promote(cfg.model_uri, cfg.alias)
    except Exception as exc:  # unknown model or version
        print(f"mrl promote: {exc}", file=sys.stderr)
        return 2
    print(f"models:/{done['model_name']}@{done['alias']} -> version {done['model_version']} "
          f"(was {done['previous'] or 'unset'})", flush=True)
    return 0


STAGE_COMMANDS = ("train", "tune", "embed", "index", "evaluate", "serve", "pipeline")
"""The commands that run a stage module; what they print follows their config's log_level (or --verbose)."""
STAGES: dict[str, tuple[type, Callable[[Any], Any]]] = {
    **{name: (cls, lambda job, name=name: _stage(name)(job)) for name, cls in zip(STAGE_COMMANDS, [
        C.TrainJobConfig, C.TuneJobConfig, C.EmbedJobConfig, C.IndexJobConfig, C.EvaluateJobConfig,
        C.ServeJobConfig, C.PipelineConfig])},
    "search": (C.SearchJobConfig, _search),
    "lineage": (C.LineageJobConfig, _lineage),
    "promote": (C.PromoteJobConfig, _promote),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: the command, `--config FILE`, `--verbose` and the `key=value` overrides."""
    parser = argparse.ArgumentParser(prog="mrl", description="Matryoshka Representation Learning on Ray")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", help="YAML config file (defaults apply without one)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print everything Ray, MLflow and the workers print (log_level=debug); by default a "
                             "stage prints its own lines and the rest goes to <output_dir>/logs/<stage>-<time>.log")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 model.dim=256")
    return parser.parse_intermixed_args(argv)


def job_config(args: argparse.Namespace) -> Any:
    """The command's validated config; `--verbose` is log_level=debug for the commands whose config has one.

    Raises:
        ConfigError: a bad value or a missing path, named.
    """
    cls = STAGES[args.stage][0]
    verbose = args.verbose and "log_level" in {f.name for f in dataclasses.fields(cls)}
    cfg = load_config(cls, args.config, [*args.overrides, *(["log_level=debug"] if verbose else [])])
    C.check_paths(cfg)  # the paths this job reads, on the machine it runs on
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        cfg = job_config(args)
    except ConfigError as exc:
        print(f"mrl {args.stage}: config error: {exc}", file=sys.stderr)
        return 2
    run = STAGES[args.stage][1]
    if args.stage not in STAGE_COMMANDS:
        result = run(cfg)
    else:  # from the first line on: the embed and tune stages connect to Ray before their stage_run
        with captured_output(args.stage, cfg.output_dir, cfg.log_level):
            result = run(cfg)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
