"""Tables read from a run directory's records (history.jsonl, summary.json)."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("gen", "generation", "{}"),
    ("val %", "val_accuracy", "{:.2%}"),
    ("test %", "test_accuracy", "{:.2%}"),
    ("synapses", "synapses", "{:,}"),
    ("syn eff", "synaptic_efficiency", "{:.1f}x"),
    ("kernels", "kernel_clusters", "{:,}"),
    ("clu eff", "cluster_efficiency", "{:.2f}x"),
    ("filters", "filters", "{:,}"),
    ("MACs", "compact_macs", "{:,}"),
    ("ms", "latency_ms", "{:.2f}"),
    ("wall s", "wall_seconds", "{:.1f}"),
)


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
    """The per-generation table of ``evosynth show``; cost columns only when recorded."""
    cols = [c for c in COLUMNS if any(c[1] in r for r in history)]
    lines = [markdown_table(history, cols)]
    if summary:
        floor = summary.get("floor")
        floor_s = f"{floor:.2%}" if floor is not None else "none"
        lines.append(f"\nbest generation {summary['best_generation']} "
                     f"(floor {floor_s}, {summary['encoding']} encoding, "
                     f"{summary['granularity']} clusters, stopped: {summary['stopped']})")
    return "\n".join(lines)
