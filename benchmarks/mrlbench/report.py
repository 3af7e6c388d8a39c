"""Tables, plots and target checks for the reproduction benchmark (`mrl.experiments.reproduce`)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {"mrl": "MRL", "mrl_e": "MRL-E", "ff": "FF-m (own model per size)", "ff_first_m": "first m of FF-d",
          "ff_pca": "PCA of FF-d", "ff_random_proj": "random projection of FF-d"}
METRIC_NAMES = {"top1": "linear top-1", "nn1": "1-NN accuracy", "map": "mAP@10"}


def _index(summary: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["method"], r["size"]): r for r in summary}


def check_targets(summary: list[dict[str, Any]], curves: list[dict[str, Any]], sizes: list[int], targets
                  ) -> list[dict[str, Any]]:
    """Each of the config's `ReproduceTargets` as {"target", "passed", "detail"}; figures in points (percent)."""
    at = _index(summary)
    d = sizes[-1]
    out = []

    def spread(a: dict, b: dict, metric: str) -> float:
        return float(np.hypot(a[f"{metric}_std"], b[f"{metric}_std"]))

    for metric in ("top1", "nn1"):
        worst = []
        for m in [s for s in sizes if s <= targets.ff_up_to]:
            mrl, ff = at[("mrl", m)], at[("ff", m)]
            gap = mrl[metric] - ff[metric]
            worst.append((gap + spread(mrl, ff, metric), m, gap))
        ok = all(w[0] >= 0 for w in worst)
        detail = ", ".join(f"{m}: {100 * g:+.2f}" for _, m, g in worst)
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


def _cell(r: dict[str, Any], metric: str) -> str:
    if r["seeds"] > 1:
        return f"{100 * r[metric]:.2f} ± {100 * r[f'{metric}_std']:.2f}"
    return f"{100 * r[metric]:.2f}"


def write_tables(out: Path, name: str, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
                 curves: list[dict[str, Any]], targets: list[dict[str, Any]], meta: dict[str, Any]) -> list[Path]:
    """<name>.md (tables + targets), <name>.csv (mean/std per method and size), <name>_per_seed.csv, <name>.json."""
    at = _index(summary)
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
        lines += [f"## {title}", "", "| size | " + " | ".join(LABELS[m] for m in methods) + " |",
                  "|---:|" + "---:|" * len(methods)]
        lines += [f"| {s} | " + " | ".join(_cell(at[(m, s)], metric) for m in methods) + " |" for s in sizes]
        lines.append("")
    lines += ["## Adaptive classification (MRL heads)", "",
              "Thresholds searched on the held-out rows of the train split for each allowed drop of held-out "
              "accuracy; test figures, mean over seeds.", "",
              "| allowed drop | expected size | test top-1 |", "|---:|---:|---:|"]
    for drop in sorted({p["max_drop"] for p in curves}):
        pts = [p for p in curves if p["max_drop"] == drop]
        lines.append(f"| {100 * drop:.1f} | {np.mean([p['expected_size'] for p in pts]):.1f} | "
                     f"{100 * np.mean([p['accuracy'] for p in pts]):.2f} |")
    lines += ["", "## Targets", ""]
    lines += [f"- {'PASS' if t['passed'] else 'MISS'}: {t['target']}. {t['detail']}" for t in targets]
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
    from mrl.plots import pyplot, size_axis

    plt = pyplot()
    sizes = sorted({r["size"] for r in summary})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (metric, title) in zip(axes, METRIC_NAMES.items()):
        for method, label in LABELS.items():
            pts = sorted((r for r in summary if r["method"] == method), key=lambda r: r["size"])
            if pts:
                ax.errorbar([p["size"] for p in pts], [100 * p[metric] for p in pts],
                            yerr=[100 * p[f"{metric}_std"] for p in pts], marker="o", ms=3, capsize=2, label=label)
        size_axis(ax, sizes, title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_adaptive(summary: list[dict[str, Any]], curves: list[dict[str, Any]], path: Path) -> Path:
    """Adaptive classification: test accuracy vs expected size, beside MRL and FF-m at fixed sizes."""
    from mrl.plots import pyplot, size_axis

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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
