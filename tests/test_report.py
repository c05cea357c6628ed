"""The HTML report, `show --format`, live progress modes and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from evosynth.report_html import Series, accuracy_figure, load_series, size_figure

from .conftest import run_cli

QUICK = ["--model", "lenet300", "--dataset", "digits", "--generations", "2", "--epochs", "1",
         "--ancestor-epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    from evosynth.cli import main

    root = tmp_path_factory.mktemp("report")
    for name, seed in (("a", "0"), ("b", "1")):
        with pytest.raises(SystemExit) as exc:
            main(["evolve", *QUICK, "--seed", seed, "--out", str(root / name),
                  "--tensorboard", str(root / f"tb-{name}")])
        assert exc.value.code == 0
    return root / "a", root / "b", root


class Page(HTMLParser):
    """Sections (id -> h2 title), h3 titles per section, images, table rows."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.h3: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._section, self._tag, self._row = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a["id"]
            self.rows[self._section] = []
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "tr":
            self._row = []
        self._tag = tag

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows[self._section].append(self._row)
            self._row = None
        self._tag = None

    def handle_data(self, data):
        if self._tag == "h2":
            self.sections[self._section] = data
        elif self._tag == "h3":
            self.h3.setdefault(self._section, []).append(data)
        elif self._tag in ("td", "th") and self._row is not None:
            self._row.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def test_report_of_a_run_holds_every_section(runs, capsys):
    a, _, _ = runs
    code, _, err = run_cli(capsys, "report", a)
    assert code == 0, err
    page = parse(a / "report.html")
    assert set(page.sections) == {"summary", "plots", "layers", "architecture", "generations",
                                  "config", "machine"}
    history = [json.loads(x) for x in (a / "history.jsonl").read_text().splitlines()]
    summary = json.loads((a / "summary.json").read_text())
    head, row = page.rows["summary"]
    assert row[head.index("best gen")] == str(summary["best_generation"])
    assert row[head.index("synapses")].startswith(f"{history[0]['synapses']:,} ->")
    # the compact layers of the best generation: one row per prunable layer
    arch = page.rows["architecture"][1:]
    assert [r[0] for r in arch] == list(history[0]["layers"])
    best = history[summary["best_generation"]]["layers"]
    for r in arch:
        assert int(r[3].split(" / ")[0].replace(",", "")) == best[r[0]]["synapses"]
        assert int(r[2].split("x")[0]) == best[r[0]]["filters"]
    assert "threads" in page.rows["machine"][1][1]
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert len(page.images) == 3
    assert "http" not in (a / "report.html").read_text().replace("http-equiv", "")


def test_report_of_two_runs_overlays_both(runs, capsys):
    a, b, root = runs
    code, _, err = run_cli(capsys, "report", a, b, "--out", root / "both.html")
    assert code == 0, err
    page = parse(root / "both.html")
    assert [r[0] for r in page.rows["summary"][1:]] == ["a", "b"]
    assert page.h3["layers"] == ["a", "b"]
    series = load_series([a, b])
    labels = [line.get_label() for line in accuracy_figure(series).axes[0].lines]
    assert [x for x in labels if not x.startswith("_")] == ["a val", "a test", "b val",
                                                            "b test"]
    for ax in size_figure(series).axes:
        assert [x.get_label() for x in ax.lines if not x.get_label().startswith("_")] == \
            ["a", "b"]


def test_report_never_overwrites_a_run_file(runs, capsys):
    a, _, _ = runs
    before = (a / "summary.json").read_bytes()
    code, _, err = run_cli(capsys, "report", a, "--out", a / "summary.json")
    assert code == 2 and "run's own files" in err
    assert (a / "summary.json").read_bytes() == before


def test_benchmark_rows_make_a_report():
    from evosynth.report_html import render

    rows = [{"method": "x", "step": s, "test_accuracy": 0.9 - s / 100, "synapses": 100 - s,
             "kernel_clusters": 10 - s, "macs": 1000 - s, "latency_ms": 1.0} for s in range(3)]
    text = render([Series("x", rows, extra={"machine": "here"})], "t")
    page = Page()
    page.feed(text)
    assert {"summary", "plots", "generations", "machine"} <= set(page.sections)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                             "(.ci/run installs it)")
def test_report_opens_in_headless_chromium(runs, capsys, tmp_path):
    from PIL import Image

    a, b, root = runs
    run_cli(capsys, "report", a, b, "--out", root / "both.html")
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", f"--screenshot={shot}", "--window-size=1400,2000",
         (root / "both.html").as_uri()], capture_output=True, text=True, timeout=120,
        check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.01, "no text or plot drawn"


def test_tensorboard_scalars_read_back(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a, _, root = runs
    history = [json.loads(x) for x in (a / "history.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(root / "tb-a"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/gen0-0", "loss/gen1-0", "generation/val_accuracy",
            "generation/synapses", "generation/kernel_clusters"} <= tags
    val = [(e.step, e.value) for e in acc.Scalars("generation/val_accuracy")]
    assert [s for s, _ in val] == [r["generation"] for r in history]
    assert [v for _, v in val] == pytest.approx([r["val_accuracy"] for r in history])
    assert [e.value for e in acc.Scalars("generation/synapses")] == \
        [r["synapses"] for r in history]


def test_show_formats(runs, capsys):
    a, _, _ = runs
    history = [json.loads(x) for x in (a / "history.jsonl").read_text().splitlines()]
    code, out, _ = run_cli(capsys, "show", a, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [int(r["generation"]) for r in rows] == [0, 1, 2]
    assert [int(r["synapses"]) for r in rows] == [r["synapses"] for r in history]
    code, out, _ = run_cli(capsys, "show", a, "--format", "json")
    data = json.loads(out)
    assert data["history"] == history and data["summary"]["best_generation"] >= 0
    code, _, err = run_cli(capsys, "show", a, "--format", "xml")
    assert code == 2 and "md, csv, json" in err


def test_progress_modes(tmp_path, capsys):
    code, out, err = run_cli(capsys, "evolve", *QUICK[:-1], "--quiet", "--out", tmp_path / "q")
    assert code == 0 and "gen   1 |" not in out + err and "| gen |" in out
    code, out, err = run_cli(capsys, "evolve", *QUICK, "--out", tmp_path / "p")
    assert code == 0 and out.count("gen   ") == 3  # one plain line per generation
    code, out, err = run_cli(capsys, "evolve", *QUICK[:-1], "--out", tmp_path / "b")
    assert code == 0 and "evolution:" in err and "gen" in err  # the bar over generations
