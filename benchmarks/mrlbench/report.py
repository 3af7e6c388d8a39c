"""Tables, plots and target checks for the reproduction benchmark (`mrlbench.reproduce`)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl.plots import pyplot, size_axis
from mrlbench.comparison import (
    by_method_size,
    errorbars_by_size,
    metric_table,
    mrl_vs_ff,
    save_figure,
    target_lines,
)

LABELS = {"mrl": "MRL", "mrl_e": "MRL-E", "ff": "FF-m (own model per size)", "ff_first_m": "first m of FF-d",
          "ff_pca": "PCA of FF-d", "ff_random_proj": "random projection of FF-d"}
METRIC_NAMES = {"top1": "linear top-1", "nn1": "1-NN accuracy", "map": "mAP@10"}


def check_targets(summary: list[dict[str, Any]], curves: list[dict[str, Any]], sizes: list[int], targets
                  ) -> list[dict[str, Any]]:
    """Each of the config's `ReproduceTargets` as {"target", "passed", "detail"}; figures in points (percent)."""
    at = by_method_size(summary)
    d = sizes[-1]
    out = []
    for metric in ("top1", "nn1"):
        ok, gaps = mrl_vs_ff(at, metric, [s for s in sizes if s <= targets.ff_up_to])
        detail = ", ".join(f"{m}: {100 * g:+.2f}" for m, g, _ in gaps)
        out.append({"target": f"MRL >= FF-m on {METRIC_NAMES[metric]} at every size <= {targets.ff_up_to} "
                              "(within seed spread)",
                    "passed": ok, "detail": f"MRL - FF-m in points by size: {detail}"})
    gap = at[("mrl", d)]["top1"] - at[("ff", d)]["top1"]
    out.append({"target": f"MRL within {100 * targets.full_size_gap:g} points of FF-d (d={d}) at full size "
                          "(linear top-1)",
                "passed": gap >= -targets.full_size_gap, "detail": f"MRL - FF-d = {100 * gap:+.2f} points"})
    gaps = {m: at[("mrl_e", m)]["top1"] - at[("mrl", m)]["top1"] for m in sizes if m >= targets.mrl_e_from}
    out.append({"target": f"MRL-E within {100 * targets.mrl_e_gap:g} point(s) of MRL from {targets.mrl_e_from} dims "
                          "up (linear top-1)",
                "passed": all(abs(g) <= targets.mrl_e_gap for g in gaps.values()),
                "detail": ", ".join(f"{m}: {100 * g:+.2f}" for m, g in gaps.items())})
    small = [m for m in sizes if m <= targets.reductions_up_to]
    lines, ok = [], True
    for method in ("ff_pca", "ff_first_m", "ff_random_proj"):
        for metric in ("top1", "nn1"):
            gaps = [at[("mrl", m)][metric] - at[(method, m)][metric] for m in small]
            ok &= all(g > 0 for g in gaps)
            lines.append(f"{LABELS[method]} {METRIC_NAMES[metric]}: " + "/".join(f"{100 * g:.1f}" for g in gaps))
    out.append({"target": f"reductions of FF-d fall below MRL at small sizes ({small})", "passed": ok,
                "detail": "MRL minus baseline in points: " + "; ".join(lines)})
    strict = [p for p in curves if p["max_drop"] == 0.0]
    acc = float(np.mean([p["accuracy"] for p in strict]))
    size = float(np.mean([p["expected_size"] for p in strict]))
    full = at[("mrl", d)]["top1"]
    budget = d * targets.adaptive_size_fraction
    out.append({"target": f"adaptive classification within {100 * targets.adaptive_gap:g} points of MRL at d={d} "
                          f"with expected size <= {budget:g}",
                "passed": acc >= full - targets.adaptive_gap and size <= budget,
                "detail": f"thresholds searched on held-out train rows (no allowed drop): test accuracy "
                          f"{100 * acc:.2f}% vs {100 * full:.2f}% at expected size {size:.1f}"})
    return out


def write_tables(out: Path, name: str, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
                 curves: list[dict[str, Any]], targets: list[dict[str, Any]], meta: dict[str, Any]) -> list[Path]:
    """<name>.md (tables + targets), <name>.csv (mean/std per method and size), <name>_per_seed.csv, <name>.json."""
    at = by_method_size(summary)
    methods = [m for m in LABELS if any(r["method"] == m for r in summary)]
    sizes = sorted({r["size"] for r in summary})
    cfg = meta["config"]
    seeds = cfg["seeds"]
    lines = [
        f"# MRL reproduction: {cfg['data']['source']}, encoder "
        f"{' '.join(str(x) for x in (cfg['model']['encoder'], cfg['model'].get('backbone')) if x)}, "
        f"d = {sizes[-1]}", "",
        f"Command: `{meta.get('command', 'python benchmarks/reproduce.py')}`. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs. Date: {time.strftime('%Y-%m-%d')}. Wall time {meta['seconds']:.0f} s "
        f"(training {meta['train_seconds']:.0f} s). MLflow run {meta['mlflow_run_id']}.", "",
        f"Every model: same encoder, data, {cfg['train']['epochs']} epoch(s), optimiser {cfg['train']['optimizer']} "
        f"lr {cfg['train']['lr']}; seeds {list(seeds)}; figures are mean ± std over seeds, in %. Database = train "
        f"split, queries = test split; linear top-1 is each model's own head for MRL, MRL-E and FF-m, and a linear "
        f"probe on the reduced train features for the reductions of FF-d.", "",
    ]
    for metric, title in METRIC_NAMES.items():
        lines += [f"## {title}", "", *metric_table(at, metric, methods, LABELS, sizes), ""]
    lines += ["## Adaptive classification (MRL heads)", "",
              "Thresholds searched on the held-out rows of the train split for each allowed drop of held-out "
              "accuracy; test figures, mean over seeds.", "",
              "| allowed drop | expected size | test top-1 |", "|---:|---:|---:|"]
    for drop in sorted({p["max_drop"] for p in curves}):
        pts = [p for p in curves if p["max_drop"] == drop]
        lines.append(f"| {100 * drop:.1f} | {np.mean([p['expected_size'] for p in pts]):.1f} | "
                     f"{100 * np.mean([p['accuracy'] for p in pts]):.2f} |")
    lines += ["", "## Targets", ""]
    lines += target_lines(targets)
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    keys = ["method", "size", "seeds"] + [k for m in ("top1", "nn1", "map") for k in (m, f"{m}_std")]
    csv = out / f"{name}.csv"
    csv.write_text("\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in summary]) + "\n")
    per_seed = out / f"{name}_per_seed.csv"
    seed_keys = ["method", "seed", "size", "top1", "nn1", "map"]
    per_seed.write_text("\n".join([",".join(seed_keys)] + [",".join(str(r[k]) for k in seed_keys) for r in rows])
                        + "\n")
    js = out / f"{name}.json"
    js.write_text(json.dumps({"meta": meta, "summary": summary, "adaptive": curves, "targets": targets}, indent=1))
    return [md, csv, per_seed, js]


def plot_sizes_by_method(summary: list[dict[str, Any]], path: Path) -> Path:
    """Three panels (linear top-1, 1-NN, mAP@10) vs size on a log axis; one line per method, std as bars."""
    plt = pyplot()
    sizes = sorted({r["size"] for r in summary})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (metric, title) in zip(axes, METRIC_NAMES.items()):
        errorbars_by_size(ax, summary, metric, LABELS)
        size_axis(ax, sizes, title)
    axes[0].legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_adaptive(summary: list[dict[str, Any]], curves: list[dict[str, Any]], path: Path) -> Path:
    """Adaptive classification: test accuracy vs expected size, beside MRL and FF-m at fixed sizes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for method in ("mrl", "ff"):
        pts = sorted((r for r in summary if r["method"] == method), key=lambda r: r["size"])
        ax.plot([p["size"] for p in pts], [100 * p["top1"] for p in pts], marker="o", ms=3, label=f"{LABELS[method]}, fixed size")
    drops = sorted({p["max_drop"] for p in curves})
    xs = [np.mean([p["expected_size"] for p in curves if p["max_drop"] == d]) for d in drops]
    ys = [100 * np.mean([p["accuracy"] for p in curves if p["max_drop"] == d]) for d in drops]
    ax.plot(xs, ys, marker="s", color="black", label="MRL adaptive (expected size)")
    size_axis(ax, sorted({r["size"] for r in summary}), "Adaptive classification", "(expected) representation size")
    ax.set_ylabel("test top-1 %")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)
