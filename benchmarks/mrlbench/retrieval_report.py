"""The retrieval benchmark's outputs: the Markdown table, the Pareto plot, and the MLflow run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mrl.artifacts import tracking
from mrl.configio import to_dict
from mrl.plots import pyplot
from mrlbench.retrieval_bench import RetrievalBenchConfig


def render(result: dict[str, Any], command: str, title: str) -> str:
    """The Markdown table: every config against the reference (first row), ratios from this one run."""
    rows, k = result["rows"], result["k"]
    base = rows[0]
    aug = result.get("augment")
    source = (f"{result['rows_database']:,} database rows" + (f" (train split grown by augmentation to "
              f"{aug['rows']:,}, seed {aug['seed']})" if aug else " (train split)"))
    lines = [f"# {title}", "",
             f"Command: `{command}`. Date: {time.strftime('%Y-%m-%d')}. Machine: {result['machine']}.", "",
             f"Embeddings: {result['model_uri']} (d = {result['dim']}), {source}, {result['queries']:,} queries "
             f"from the test split, relevance = same label; vectors held as {result['dtype']}. Whole run "
             f"{result['seconds'] / 60:.1f} min. Speed-ups are queries/second over the first row's, measured "
             "in this run; q/s is the median of repeated passes over the whole query batch; single queries run on one "
             "thread, as a Serve replica runs them.", "",
             f"| config | top-1 | mAP@{k} | P@{k} | exact top-{k} in shortlist | recall@{k} | batch (ms) | q/s | "
             "speed-up | median single (ms) | mult-adds / query | build (s) | peak RSS (GiB) | bytes / vector | "
             "resident B / vector | vector KiB read / query |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    picked = {name for name in result.get("picks", {}).values() if name}
    for r in rows:
        single = "-" if r["single_ms"] is None else f"{r['single_ms']:.2f}"
        held = "-" if r.get("bytes_per_vector") is None else f"{r['bytes_per_vector']:,.0f}"
        resident = "-" if r.get("resident_bytes_per_vector") is None else f"{r['resident_bytes_per_vector']:,.0f}"
        read = "-" if r.get("vector_kib_per_query") is None else f"{r['vector_kib_per_query']:,.0f}"
        name = f"**{r['config']}**" if r["config"] in picked else r["config"]
        lines.append(
            f"| {name} | {100 * r['top1']:.2f} | {100 * r['map']:.2f} | {100 * r['precision']:.2f} | "
            f"{100 * r['shortlist_recall']:.1f}% | {100 * r['result_recall']:.1f}% | "
            f"{1000 * r['queries'] / r['qps']:,.0f} | {r['qps']:,.0f} | "
            f"{r['qps'] / base['qps']:.1f}x | {single} | {r['madds_per_query']:,.0f} | {r['build_seconds']:.1f} | "
            f"{r['peak_rss_gib']:.1f} | {held} | {resident} | {read} |")
    lines += ["", f"recall@{k}: the share of the exact full-size top-{k} a search returns (the ann-benchmarks "
              "measure). Bytes / vector: what a deployment of the search holds per database row (its index's "
              "vectors, graph links or lists, its codes, plus the full-size rerank vectors when it reranks with "
              "them); resident B / vector leaves out full vectors that are memory-mapped from a file "
              f"(vectors: {result.get('vectors', 'memory')} in this run), which the page cache holds and may drop; "
              "vector KiB read / query is what the float reranks read of those vectors per query (candidates x "
              "prefix x item size: file reads when the file is not cached); peak RSS is the whole process's while "
              "the index was built and searched, the database included."]
    if result.get("targets"):
        lines += targets_section(result)
    if result.get("picks"):
        lines += tuning_section(result)
    lines += ["", f"Where the time goes (one pass over all {result['queries']:,} queries, milliseconds per stage):", ""]
    for r in rows:
        if len(r.get("stage_ms", [])) > 1:
            lines.append(f"- {r['config']}: " + ", ".join(f"{name} {ms:.0f}" for name, ms in r["stage_ms"]))
    return "\n".join(lines) + "\n"


def tuning_section(result: dict[str, Any]) -> list[str]:
    """Each family's pick, chosen on the held-out tuning queries, and how it compares on the evaluation ones."""
    rows, k = result["rows"], result["k"]
    exact = rows[0]
    lines = ["", "## Settings chosen on held-out queries", "",
             f"Every search also ran on {result['tune_queries']:,} tuning queries, a seeded sample of the test split "
             f"disjoint from the {result['queries']:,} evaluation queries. In each family, the pick (bold above) is "
             f"the search with the most queries/second there among those within {result['map_gap']} points of "
             f"exact search's mAP@{k} there ({100 * exact['tune']['map']:.2f})"
             + (f"; the {result['targets']['family']} family's pick must also reach the {result['baseline']} "
                f"pick's recall@{k} there, a target it is held to" if result.get("targets") else "")
             + "; the figures below are the evaluation queries'.", "",
             f"| family | pick | mAP@{k} − exact (tuning) | mAP@{k} − exact (evaluation) | q/s | × exact flat |"
             + (f" × {result['baseline']} q/s | × its single latency | × its build time | × its peak RSS | "
                f"× its bytes / vector | × its resident B / vector | recall@{k} − its |"
                if result.get("baseline") else ""),
             "|---|---|---:|---:|---:|---:|" + ("---:|" * 7 if result.get("baseline") else "")]
    for c in result["comparison"]:
        if c["pick"] is None:
            lines.append(f"| {c['family']} | none within {result['map_gap']} points | | | | |")
            continue
        line = (f"| {c['family']} | {c['pick']} | {c['tune_map_gap']:+.2f} | {c['map_gap']:+.2f} | "
                f"{c['qps']:,.0f} | {c['vs_exact_qps']:.0f}x |")
        if result.get("baseline"):
            if "vs_baseline_qps" in c:
                cells = [c["vs_baseline_qps"], c["vs_baseline_single"], c["vs_baseline_build"],
                         c["vs_baseline_peak_rss"], c["vs_baseline_bytes"], c.get("vs_baseline_resident")]
                line += "".join(" - |" if v is None else f" {v:.3f} |" for v in cells)
                line += f" {100 * c['vs_baseline_recall']:+.1f} |" if "vs_baseline_recall" in c else " - |"
            else:
                line += " (baseline) |" + " |" * 6
        lines.append(line)
    lines += ["", "To serve a pick, give the pipeline these settings (they make the same query plan run in the "
              "service's executor):", ""]
    by_name = {r["config"]: r for r in rows}
    for c in result["comparison"]:
        deploy = c["pick"] and by_name[c["pick"]].get("deploy")
        if deploy:
            lines.append(f"- {c['family']} ({c['pick']}): `index: {_flow(deploy['index'])}`, "
                         f"`serve: {_flow(deploy['serve'])}`")
    return lines


def targets_section(result: dict[str, Any]) -> list[str]:
    """Met / missed for the memory-first targets: the `targets.family` pick against the baseline's pick."""
    t = result["targets"]
    lines = ["", f"## Targets: {t['family']} against {result['baseline']}", "",
             "| target | bar | measured | met |", "|---|---|---:|---|"]
    for row in t["rows"]:
        lines.append(f"| {row['target']} | {row['bar']} | {row['measured']} | {'met' if row['met'] else 'missed'} |")
    return lines


def _flow(mapping: dict[str, Any]) -> str:
    """A one-line YAML flow mapping."""
    def value(v):
        if v is None:
            return "null"
        return v if isinstance(v, str) else json.dumps(v).replace('"', "")

    return "{" + ", ".join(f"{k}: {value(v)}" for k, v in mapping.items()) + "}"


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Pareto plot: mAP@k against queries/second, one numbered point per config (legend below), with the
    exact search's mAP@k - 0.1 drawn as the accuracy bar."""
    plt = pyplot()
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 5.5 + 0.17 * len(rows)))
    bar = 100 * rows[0]["map"] - 0.1
    ax.axhline(bar, color="grey", lw=0.8, ls="--")
    ax.annotate("exact - 0.1", (rows[0]["qps"], bar), fontsize=7, color="grey", xytext=(2, -9),
                textcoords="offset points")
    colours = plt.get_cmap("tab20")
    held = [r.get("bytes_per_vector") or 0 for r in rows]
    biggest = max(held) or 1
    picked = {name for name in result.get("picks", {}).values() if name}
    for i, r in enumerate(rows, 1):
        size = 12 + 260 * held[i - 1] / biggest  # marker area: memory per vector
        ax.scatter(r["qps"], 100 * r["map"], s=size, color=colours((i - 1) % 20), alpha=0.75,
                   edgecolors="black" if r["config"] in picked else "none", linewidths=1.2,
                   label=f"{i}. {r['config']}" + (f" ({held[i - 1]:,.0f} B/vector)" if held[i - 1] else ""))
        ax.annotate(str(i), (r["qps"], 100 * r["map"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    front = pareto_rows(rows)
    ax.plot([r["qps"] for r in front], [100 * r["map"] for r in front], color="black", lw=0.7, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("queries / second (batch, log scale)")
    ax.set_ylabel(f"mAP@{result['k']} (%)")
    ax.set_title(f"{title}\naccuracy vs throughput; marker area = memory per vector, black edge = a family's "
                 "pick, line = Pareto front", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(result: dict[str, Any], path: Path, title: str) -> None:
    """Queries/second against resident bytes per vector (both log scale), one numbered point per search,
    coloured by recall@k, marker area growing with the full-vector bytes it reads per query (file reads when
    the vectors are memory-mapped); hollow markers miss the accuracy bar (exact mAP@k - map_gap on the
    evaluation queries); the line joins the front no search beats on both (fewer bytes and more q/s)."""
    plt = pyplot()
    rows = [r for r in result["rows"] if r.get("resident_bytes_per_vector")]
    if not rows:
        return
    k = result["k"]
    bar = result["rows"][0]["map"] - result.get("map_gap", 0.1) / 100
    fig, ax = plt.subplots(figsize=(9, 5.5 + 0.17 * len(rows)))
    cmap = plt.get_cmap("viridis")
    lo, hi = min(r["result_recall"] for r in rows), max(r["result_recall"] for r in rows)
    norm = plt.Normalize(vmin=lo, vmax=max(hi, lo + 1e-3))
    picked = {name for name in result.get("picks", {}).values() if name}
    most_read = max([r.get("vector_kib_per_query") or 0 for r in rows]) or 1
    for i, r in enumerate(rows, 1):
        colour = cmap(norm(r["result_recall"]))
        fits = r["map"] >= bar - 1e-12
        area = 25 + 250 * (r.get("vector_kib_per_query") or 0) / most_read
        ax.scatter(r["resident_bytes_per_vector"], r["qps"], s=area,
                   facecolors=colour if fits else "none", edgecolors="black" if r["config"] in picked else colour,
                   linewidths=1.4, label=f"{i}. {r['config']} ({r['family'] or '-'})")
        ax.annotate(str(i), (r["resident_bytes_per_vector"], r["qps"]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    front = [r for r in rows if not any(o["resident_bytes_per_vector"] <= r["resident_bytes_per_vector"]
                                        and o["qps"] >= r["qps"] and (o["resident_bytes_per_vector"]
                                        < r["resident_bytes_per_vector"] or o["qps"] > r["qps"]) for o in rows)]
    front.sort(key=lambda r: r["resident_bytes_per_vector"])
    ax.plot([r["resident_bytes_per_vector"] for r in front], [r["qps"] for r in front], color="black", lw=0.7,
            alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("resident bytes per vector (log scale; memory-mapped full vectors not counted)")
    ax.set_ylabel("queries / second (batch, log scale)")
    ax.set_title(f"{title}\nthroughput vs resident memory; colour = recall@{k}, marker area = full-vector KiB "
                 f"read per query (up to {most_read:,.0f}),\nhollow = below exact mAP@{k} - "
                 f"{result.get('map_gap', 0.1)}, black edge = a family's pick, line = Pareto front", fontsize=8)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"recall@{k}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The searches no other search beats on both mAP and q/s, by q/s ascending."""
    front = [r for r in rows if not any(o["map"] >= r["map"] and o["qps"] >= r["qps"]
                                        and (o["map"] > r["map"] or o["qps"] > r["qps"]) for o in rows)]
    return sorted(front, key=lambda r: r["qps"])


def write_results(cfg: RetrievalBenchConfig, result: dict[str, Any], command: str, repo: Path) -> Path:
    """<results>.md / .json / _pareto.png under `repo`, also logged to MLflow as a `retrieval-benchmark` run."""
    import mlflow

    stem = repo / cfg.results
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js, png = stem.with_suffix(".md"), stem.with_suffix(".json"), stem.parent / f"{stem.name}_pareto.png"
    memory_png = stem.parent / f"{stem.name}_memory.png"
    md.write_text(render(result, command, cfg.title))
    js.write_text(json.dumps({"command": command, "config": to_dict(cfg), **result}, indent=1))
    plot(result, png, cfg.title)
    plot_memory(result, memory_png, cfg.title)
    tracking.setup(cfg.mlflow, cfg.output_dir)
    with mlflow.start_run(run_name="retrieval-benchmark", tags={"mrl.stage": "benchmark",
                                                                 "mrl.input_uri": result["embeddings"]}):
        tracking.log_params({"benchmark": {k: v for k, v in to_dict(cfg).items() if k != "searches"}})
        for i, r in enumerate(result["rows"]):
            mlflow.log_metrics({f"map_{i}": r["map"], f"qps_{i}": r["qps"], f"top1_{i}": r["top1"]})
        for file in (md, js, png, memory_png):
            if file.exists():
                mlflow.log_artifact(str(file))
    return md
