"""One self-contained HTML page for one or more runs: what shrank, where, and what it cost.

Everything is inline (plots as base64 PNG from matplotlib, no script, no network), so the
file opens from disk anywhere. A run is read from its directory alone: records, summary,
masks, config and ``run.json``; no model is rebuilt.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import dump_yaml
from .errors import UserError
from .io import write_text
from .report import history_table
from .rundir import RunDir

ACCURACY_KEYS = ("val_accuracy", "test_accuracy", "val_map", "test_map")
SIZE_AXES = (("synapses", "synapses"), ("kernel_clusters", "kernel clusters"),
             ("compact_macs", "MACs (compact)"), ("latency_ms", "latency ms (compact)"))


@dataclass
class Series:
    """One line on every plot: a run, or one method of a side-by-side benchmark."""

    label: str
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    run: RunDir | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return (self.summary or {}).get("metric") or self.records[0].get("metric", "accuracy")

    def value(self, rec: dict[str, Any], key: str) -> float | None:
        """A record's value, with the benchmark's names as fallbacks (``macs``)."""
        v = rec.get(key, rec.get({"compact_macs": "macs"}.get(key, "")))
        return v if isinstance(v, (int, float)) else None


def load_series(run_dirs: list[Path]) -> list[Series]:
    out = []
    labels = _labels(run_dirs)
    for path, label in zip(run_dirs, labels, strict=True):
        rd = RunDir(path)
        if not rd.path.is_dir():
            raise UserError(f"{path} does not exist or is not a folder")
        out.append(Series(label, rd.history(), rd.summary(), rd))
    return out


def _labels(paths: list[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


# -- plots -------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_figure(series: list[Series]):
    """Validation (solid) and test (dashed) score per generation, every run overlaid."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for s in series:
        for split, style in (("val", "-"), ("test", "--")):
            key = f"{split}_{s.metric}"
            pts = [(r.get("generation", r.get("step")), s.value(r, key)) for r in s.records]
            pts = [(g, 100 * v) for g, v in pts if v is not None and g is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3,
                        label=f"{s.label} {split}")
        floor = (s.summary or {}).get("floor")
        if floor is not None and floor > 0:
            ax.axhline(100 * floor, color="grey", lw=0.8, ls=":")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{series[0].metric} % (dotted: validation floor)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def size_figure(series: list[Series]):
    """Test score against synapses, kernel clusters, MACs and latency (log), overlaid."""
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, label) in zip(axes, SIZE_AXES, strict=True):
        drawn = False
        for s in series:
            acc = f"test_{s.metric}"
            pts = [(s.value(r, key), s.value(r, acc)) for r in s.records]
            pts = [(x, 100 * y) for x, y in pts if x and y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", ms=3, label=s.label)
                drawn = True
        if not drawn:  # e.g. measure.costs off: say so instead of an empty frame
            ax.text(0.5, 0.5, f"{label}:\nnot recorded", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for s in series:
            floor = (s.summary or {}).get("floor")
            if floor is not None and floor > 0:
                ax.axhline(100 * floor, color="grey", lw=0.8, ls=":")
        xs = [x for line in ax.lines for x in line.get_xdata()]
        if max(xs) > 10 * min(xs):  # a log axis only where the values span a decade
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            label += " (log)"
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {series[0].metric} %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def layer_figure(s: Series):
    """Per layer and generation: the share of filters (neurons) and of synapses alive."""
    recs = [r for r in s.records if "layers" in r]
    if not recs:
        return None
    names = list(recs[0]["layers"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.6))
    for ax, (num, den, title) in zip(axes, (("filters", "dense_filters", "filters alive"),
                                            ("synapses", "dense_synapses", "synapses alive")),
                                     strict=True):
        grid = torch.tensor([[r["layers"][n][num] / max(1, r["layers"][n][den])
                              for r in recs] for n in names])
        im = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xticks(range(len(recs)), [r["generation"] for r in recs], fontsize=7)
        ax.set_xlabel("generation")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03)
    return fig


# -- tables ------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def summary_rows(series: list[Series]) -> list[list[str]]:
    rows = []
    for s in series:
        anc = s.records[0]
        best_g = (s.summary or {}).get("best_generation", s.records[-1].get("generation", 0))
        best = next((r for r in s.records if r.get("generation") == best_g), s.records[-1])
        m = s.metric
        rows.append([s.label, best_g, (s.summary or {}).get("stopped", "n/a"),
                     _fmt((s.summary or {}).get("floor"), pct=True),
                     f"{_fmt(anc.get(f'test_{m}'), True)} -> {_fmt(best.get(f'test_{m}'), True)}",
                     f"{_fmt(anc.get('synapses'))} -> {_fmt(best.get('synapses'))}",
                     f"{_fmt(anc.get('kernel_clusters'))} -> {_fmt(best.get('kernel_clusters'))}",
                     f"{_fmt(anc.get('filters'))} -> {_fmt(best.get('filters'))}",
                     f"{_fmt(s.value(anc, 'compact_params'))} -> "
                     f"{_fmt(s.value(best, 'compact_params'))}",
                     f"{_fmt(s.value(anc, 'compact_macs'))} -> "
                     f"{_fmt(s.value(best, 'compact_macs'))}",
                     f"{_fmt(s.value(anc, 'latency_ms'))} -> {_fmt(s.value(best, 'latency_ms'))}",
                     f"{_fmt(s.value(anc, 'model_bytes'))} -> "
                     f"{_fmt(s.value(best, 'model_bytes'))}",
                     f"{_fmt(best.get('synaptic_efficiency'))}x / "
                     f"{_fmt(best.get('cluster_efficiency'))}x"])
    return rows


SUMMARY_HEAD = ["run", "best gen", "stopped", "floor", "test (ancestor -> best)", "synapses",
                "kernel clusters", "filters", "params", "MACs", "latency ms", "bytes",
                "synaptic / cluster eff."]


def architecture_rows(s: Series) -> list[list[str]]:
    """The best generation's layers: dense shape and the live filters x live inputs."""
    if s.run is None or s.summary is None:
        return []
    path = s.run.generation_dir(s.summary["best_generation"]) / "masks.safetensors"
    if not path.is_file():
        return []
    from .io import read_safetensors

    rows = []
    for name, m in read_safetensors(path).items():
        m = m.bool()
        rows_alive = int(m.reshape(m.shape[0], -1).any(1).sum())
        cols_alive = int(m.transpose(0, 1).reshape(m.shape[1], -1).any(1).sum())
        after = (rows_alive, cols_alive, *m.shape[2:])
        rows.append([name, "x".join(map(str, m.shape)), "x".join(map(str, after)),
                     f"{int(m.sum()):,} / {m.numel():,}"])
    return rows


def detection_rows(s: Series) -> list[list[str]]:
    rows = []
    for r in s.records:
        ap = r.get("test_ap") or r.get("val_ap")
        if isinstance(ap, dict):
            rows.append([r["generation"], *(f"{100 * v:.2f}%" for v in ap.values())])
    return rows


# -- the page ----------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}"""


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render(series: list[Series], title: str) -> str:
    """The whole page as a string."""
    if not series or not all(s.records for s in series):
        raise UserError("nothing to report: a run has no recorded generation yet")
    parts = [_section("summary", "Summary", _table(SUMMARY_HEAD, summary_rows(series))),
             _section("plots", "Accuracy and size",
                      _img(_png(accuracy_figure(series)), "accuracy per generation")
                      + _img(_png(size_figure(series)), "accuracy against size"))]
    layers = "".join(f"<h3>{html.escape(s.label)}</h3>"
                     f"{_img(_png(fig), 'layers of ' + s.label)}"
                     for s in series if (fig := layer_figure(s)) is not None)
    if layers:
        parts.append(_section("layers", "Where the network lost its width", layers))
    arch = "".join(f"<h3>{html.escape(s.label)} (generation {s.summary['best_generation']})"
                   f"</h3>" + _table(["layer", "dense shape", "live shape", "synapses"], rows)
                   for s in series if (rows := architecture_rows(s)))
    if arch:
        parts.append(_section("architecture", "Best generation's compact layers", arch))
    det = "".join(f"<h3>{html.escape(s.label)}</h3>" + _table(
        ["generation", *s.records[0].get("test_ap", {})], rows)
        for s in series if (rows := detection_rows(s)))
    if det:
        parts.append(_section("detection", "Average precision per class (test)", det))
    genealogy = "".join(f"<h3>{html.escape(s.label)}</h3>{_genealogy(s)}" for s in series
                        if any(len(r.get("offspring", ())) > 1 for r in s.records))
    if genealogy:
        parts.append(_section("genealogy", "Genealogy", genealogy))
    tables = "".join(f"<h3>{html.escape(s.label)}</h3><pre>"
                     f"{html.escape(history_table(s.records, s.summary if s.run else None))}"
                     "</pre>"
                     for s in series)
    parts.append(_section("generations", "Every generation", tables))
    configs = "".join(f"<h3>{html.escape(s.label)}</h3><pre>"
                      f"{html.escape(dump_yaml(s.run.config()))}</pre>"
                      for s in series if s.run and s.run.config_path.is_file())
    configs += "".join(f"<h3>{html.escape(s.label)}</h3><pre>"
                       f"{html.escape(str(s.extra['config']))}</pre>"
                       for s in series if "config" in s.extra)
    if configs:
        parts.append(_section("config", "Configuration", configs))
    parts.append(_section("machine", "Machine, versions and timings", _table(
        ["run", "machine / versions", "generations", "total wall s", "mean s / generation"],
        [[s.label, _environment(s), len(s.records) - 1,
          _fmt(sum(r.get("wall_seconds", 0) for r in s.records)),
          _fmt(_mean([r.get("wall_seconds") for r in s.records[1:]]))] for s in series])))
    body = "".join(parts)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _genealogy(s: Series) -> str:
    """Every individual of the run's accepted tries: who bred it, how it did, whether it
    joined the population (and was its generation's best)."""
    rows = []
    metric = s.records[0].get("metric", "accuracy")
    for r in s.records:
        survivors = set(r.get("population", [r.get("id")]))
        for ind in r.get("offspring", []):
            fate = "best" if ind["id"] == r.get("id") else \
                "parent" if ind["id"] in survivors else ""
            rows.append([r["generation"], ind["id"], " + ".join(ind["parents"]) or "-",
                         _fmt(ind.get(f"val_{metric}"), pct=True), f"{ind['synapses']:,}",
                         f"{ind['kernel_clusters']:,}", fate])
    return _table(["generation", "id", "parents", f"val {metric}", "synapses",
                   "kernel clusters", "selected"], rows)


def _environment(s: Series) -> str:
    env = s.run.environment() if s.run else s.extra.get("environment", {})
    if not env:
        return s.extra.get("machine", "not recorded")
    return ", ".join(f"{k} {env[k]}" for k in ("device", "threads", "torch", "python",
                                               "evosynth") if k in env)


def _mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """``evosynth report``: one HTML page for the runs; default ``<first run>/report.html``."""
    series = load_series(run_dirs)
    out = out or series[0].run.path / "report.html"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name a file")
    for s in series:
        if s.run and s.run.owns(out):
            raise UserError(f"--out {out} is one of the run's own files")
    title = "evosynth report: " + ", ".join(s.label for s in series)
    write_text(out, render(series, title))
    return out
