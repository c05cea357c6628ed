"""Tables read from a run directory's records (history.jsonl, summary.json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

# every per-generation column a table may show: (header, history key, format); a task's
# score columns (val_<metric>, test_<metric>) are made from its metric's name
CATALOGUE = {c[1]: c for c in (
    ("gen", "generation", "{}"),
    ("synapses", "synapses", "{:,}"),
    ("syn eff", "synaptic_efficiency", "{:.1f}x"),
    ("kernels", "kernel_clusters", "{:,}"),
    ("clu eff", "cluster_efficiency", "{:.2f}x"),
    ("filters", "filters", "{:,}"),
    ("stream ch.", "coupled_channels", "{}"),
    ("MACs", "compact_macs", "{:,}"),
    ("ms", "latency_ms", "{:.2f}"),
    ("wall s", "wall_seconds", "{:.1f}"),
)}
METRIC_NAMES = {"accuracy": "", "map": "mAP "}  # how a metric is headed (accuracy: plain %)


def metric_column(key: str) -> tuple[str, str, str]:
    """``val_accuracy`` -> ("val %", ...), ``test_map`` -> ("test mAP %", ...)."""
    split, metric = key.split("_", 1)
    name = METRIC_NAMES.get(metric, f"{metric} ")
    return (f"{split} {name}%", key, "{:.2%}")


def columns(*keys: str) -> list[tuple[str, str, str]]:
    return [CATALOGUE[k] if k in CATALOGUE else metric_column(k) for k in keys]


COLUMNS = columns("generation", "val_accuracy", "test_accuracy", "synapses",
                  "synaptic_efficiency", "kernel_clusters", "cluster_efficiency", "filters",
                  "compact_macs", "latency_ms", "wall_seconds")


def _cell(fmt: str, value: Any) -> str:
    if value is None:
        return "n/a"
    return fmt.format(value).replace("%", "") if fmt.endswith("%}") else fmt.format(value)


def markdown_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(fmt, r.get(key)) for _, key, fmt in columns) + " |"
            for r in rows]
    return "\n".join([head, rule, *body])


def history_table(history: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    """The per-generation table of ``evosynth show``: the columns the run recorded."""
    metric = history[0].get("metric", "accuracy") if history else "accuracy"
    present = [c for c in CATALOGUE.values() if any(c[1] in r for r in history)]
    cols = [present[0], *columns(f"val_{metric}", f"test_{metric}"), *present[1:]]
    lines = [markdown_table(history, cols)]
    if summary:
        floor = summary.get("floor")
        # a floor at or below zero (max_drop 1.0: "no floor") cannot reject a network
        floor_s = f"{floor:.2%}" if floor is not None and floor > 0 else "none"
        lines.append(f"\nbest generation {summary['best_generation']} "
                     f"(floor {floor_s}, {summary['encoding']} encoding, "
                     f"{summary['granularity']} clusters, stopped: {summary['stopped']})")
        if summary.get("population", 1) > 1 or summary.get("parents", 1) > 1:
            lines.append(f"population {summary['population']}, {summary['parents']} "
                         f"parent(s) per offspring, {summary.get('individuals', '?')} "
                         "individuals bred (genealogy.json); rows are each generation's "
                         "fittest")
    return "\n".join(lines)


FORMATS = ("md", "csv", "json")


def render_history(history: list[dict[str, Any]], summary: dict[str, Any] | None,
                   fmt: str = "md") -> str:
    """``evosynth show``: the table (md), every scalar of every record (csv), or the
    records and summary as they are (json)."""
    if fmt == "json":
        return json.dumps({"summary": summary, "history": history}, indent=1)
    if fmt == "csv":
        keys = list(dict.fromkeys(k for r in history for k, v in r.items()
                                  if not isinstance(v, (dict, list))))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        return buf.getvalue().rstrip("\n")
    return history_table(history, summary)


def best_within(history: list[dict[str, Any]], key: str, drop: float) -> str | None:
    """One line: the generation with the most kernel clusters removed whose ``key`` (a test
    metric) is within ``drop`` of the ancestor's; None if no generation is."""
    anc = history[0]
    ok = [r for r in history[1:] if r[key] >= anc[key] - drop]
    if not ok:
        return None
    b = max(ok, key=lambda r: r["cluster_efficiency"])
    return (f"- most kernel clusters removed within {100 * drop:g} points of the ancestor's "
            f"{key}: gen {b['generation']}, {b['cluster_efficiency']:.2f}x kernels, "
            f"{b['synaptic_efficiency']:.1f}x synapses at {b[key]:.2%} "
            f"(ancestor {anc[key]:.2%})")


def write_results(out: Path, text: str, histories: dict[str, list[dict[str, Any]]],
                  total_seconds: float, machine: str) -> None:
    """A benchmark's table as results.md, and its histories (less per-layer detail) as
    results.json, next to its runs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(
        {"machine": machine, "total_seconds": total_seconds,
         "history": {k: [{kk: vv for kk, vv in r.items() if kk != "layers"} for r in v]
                     for k, v in histories.items()}}, indent=1))


def format_record(r: dict[str, Any]) -> str:
    metric = r.get("metric", "accuracy")
    name = "mAP " if metric == "map" else ""
    test = r[f"test_{metric}"]
    test = f"{100 * test:.2f}%" if test is not None else "n/a"
    flag = "" if r["meets_floor"] else "  (below floor)"
    return (f"gen {r['generation']:>3} | val {name}{100 * r[f'val_{metric}']:.2f}% "
            f"test {name}{test} | "
            f"synapses {r['synapses']:,} ({r['synaptic_efficiency']:.1f}x) | "
            f"kernels {r['kernel_clusters']:,} ({r['cluster_efficiency']:.2f}x) | "
            f"filters {r['filters']:,} | {r['wall_seconds']:.1f}s{flag}")
