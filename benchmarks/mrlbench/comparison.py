"""What the MRL comparisons on images (`reproduce`, `report`) and on text (`text_bench`, `text_report`) share:
the models every seed trains, the mean ± std over seeds, the table cells and the check that MRL matches the
fixed-feature model FF-m trained for each size m.

Rows are plain dicts {"method", "seed", "size", <metric>: fraction, ...}; a summary has one dict per (method,
size) with each metric's mean and "<metric>_std" over seeds (see `aggregate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrl.config import NestingConfig, TrainJobConfig
from mrl.configio import check


def check_seeds(seeds: Sequence[int]) -> None:
    """Raises ConfigError unless `seeds` is a non-empty list of distinct integers."""
    check(len(seeds) > 0 and len(set(seeds)) == len(seeds),
           f"seeds must be a non-empty list of distinct integers, got {list(seeds)}")


def check_results_name(name: str) -> None:
    """Raises ConfigError unless `name` is a plain file stem (the results are <name>.md, <name>.csv, ...)."""
    check(bool(name) and "/" not in name, f"results_name must be a plain file stem, got {name!r}")


def seed_jobs(cfg: Any, seed: int) -> dict[str, TrainJobConfig]:
    """The training config of every model of one seed, in training order: "mrl" (the config's own model) and
    "ff_<m>" for each nesting size m (FF-m: the same encoder with d = m and one nesting size; m = d is FF-d).

    Args:
        cfg: a comparison config with output_dir, data, model, train and mlflow; train.seed becomes `seed`.
    """
    base = TrainJobConfig(output_dir=cfg.output_dir, data=cfg.data, model=cfg.model,
                          train=dataclasses.replace(cfg.train, seed=seed), mlflow=cfg.mlflow)
    jobs = {"mrl": base}
    for m in cfg.model.sizes:
        ff = dataclasses.replace(cfg.model, dim=m, nesting=NestingConfig(schedule="list", sizes=(m,)))
        jobs[f"ff_{m}"] = dataclasses.replace(base, model=ff)
    return jobs


def aggregate(rows: list[dict[str, Any]], metrics: Sequence[str], extremes: bool = False) -> list[dict[str, Any]]:
    """Mean and standard deviation (ddof 1; 0 for one seed) of each metric over seeds per (method, size), in
    first-seen order.

    Returns:
        One dict per (method, size): {"method", "size", "seeds", <metric>, "<metric>_std"}, and "<metric>_min",
        "<metric>_max" with `extremes`.
    """
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["size"]), []).append(row)
    out = []
    for (method, size), group in groups.items():
        entry: dict[str, Any] = {"method": method, "size": size, "seeds": len(group)}
        for metric in metrics:
            values = np.array([g[metric] for g in group], dtype=np.float64)
            entry[metric] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            if extremes:
                entry[f"{metric}_min"] = float(values.min())
                entry[f"{metric}_max"] = float(values.max())
        out.append(entry)
    return out


def by_method_size(summary: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, Any]]:
    """The summary keyed by (method, size)."""
    return {(r["method"], r["size"]): r for r in summary}


def mrl_vs_ff(at: dict[tuple[str, Any], dict[str, Any]], metric: str, sizes: Sequence[int], method: str = "mrl"
              ) -> tuple[bool, list[tuple[int, float, float]]]:
    """MRL (or another `method`'s rows, e.g. "mrl_tuned") against FF-m on one metric at each of `sizes`, within
    seed spread.

    Args:
        at: a summary keyed by (method, size) (`by_method_size`), with `method` and "ff" rows at every size.

    Returns:
        (whether MRL - FF-m + spread >= 0 at every size, [(m, MRL - FF-m, spread)]) where spread is the two
        standard deviations added in quadrature; fractions.
    """
    gaps = []
    for m in sizes:
        mrl, ff = at[(method, m)], at[("ff", m)]
        gaps.append((m, mrl[metric] - ff[metric], float(np.hypot(mrl[f"{metric}_std"], ff[f"{metric}_std"]))))
    return all(gap + spread >= 0 for _, gap, spread in gaps), gaps


def cell(r: dict[str, Any] | None, metric: str) -> str:
    """A table cell in percent: "mean ± std" over several seeds, the mean alone for one, "-" for no row."""
    if r is None:
        return "-"
    if r["seeds"] > 1:
        return f"{100 * r[metric]:.2f} ± {100 * r[f'{metric}_std']:.2f}"
    return f"{100 * r[metric]:.2f}"


def metric_table(at: dict[tuple[str, Any], dict[str, Any]], metric: str, methods: Sequence[str],
                 labels: dict[str, str], sizes: Sequence[int]) -> list[str]:
    """Markdown lines of one metric's table: a row per size, a column per method (`cell`)."""
    lines = ["| size | " + " | ".join(labels[m] for m in methods) + " |", "|---:|" + "---:|" * len(methods)]
    return lines + [f"| {s} | " + " | ".join(cell(at.get((m, s)), metric) for m in methods) + " |" for s in sizes]


def target_lines(targets: list[dict[str, Any]]) -> list[str]:
    """Markdown bullets, one per checked target {"target", "passed", "detail"}."""
    return [f"- {'PASS' if t['passed'] else 'MISS'}: {t['target']}. {t['detail']}" for t in targets]


def errorbars_by_size(ax, summary: list[dict[str, Any]], metric: str, labels: dict[str, str]) -> None:
    """One line per method of `labels` on `ax`: the metric in percent against size, the std over seeds as bars."""
    for method, label in labels.items():
        pts = sorted((r for r in summary if r["method"] == method), key=lambda r: r["size"])
        if pts:
            ax.errorbar([p["size"] for p in pts], [100 * p[metric] for p in pts],
                        yerr=[100 * p[f"{metric}_std"] for p in pts], marker="o", ms=3, capsize=2, label=label)


def save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close a figure; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
