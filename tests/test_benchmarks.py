"""The side-by-side benchmark's quick mode runs end to end and writes its table and plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_compare(out: Path, *args: str) -> list[dict]:
    """The quick side-by-side run at one thread a process (the same sums in any layout)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick",
                        "--out", str(out), *args], capture_output=True, text=True,
                       check=False, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "compare.json").read_text())


def test_compare_quick(tmp_path):
    rows = quick_compare(tmp_path)
    methods = {row["method"] for row in rows}
    assert methods == {"ancestor", "evosynth (defaults)", "magnitude (torch prune)",
                       "torch-pruning (L1 magnitude)", "torch-pruning (L2 group norm)",
                       "torch-pruning (Taylor)", "random (control)"}
    by = {m: [row for row in rows if row["method"] == m] for m in methods}
    # IMP and its random control prune to the same sparsity at every step they both ran
    n = min(len(by["magnitude (torch prune)"]), len(by["random (control)"]))
    assert [x["synapses"] for x in by["magnitude (torch prune)"][:n]] == \
        [x["synapses"] for x in by["random (control)"][:n]]
    # structured pruning shrinks filters; unstructured pruning does not
    for criterion in ("L1 magnitude", "L2 group norm", "Taylor"):
        assert by[f"torch-pruning ({criterion})"][-1]["filters"] < rows[0]["filters"]
    assert by["magnitude (torch prune)"][-1]["filters"] == rows[0]["filters"]
    for row in rows:
        assert 0 <= row["test_accuracy"] <= 1 and row["latency_ms"] > 0
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert "| method |" in (tmp_path / "compare.md").read_text()
    page = (tmp_path / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "torch-pruning (Taylor)" in page
    # a method's steps of one dense shape share one time (IMP removes no filter)
    imp = by["magnitude (torch prune)"]
    assert len({(x["macs"], x["latency_ms"]) for x in imp}) == len({x["macs"] for x in imp})
    # two draws and the peers two at a time (--jobs 2 --draws 2): draw 0 is the sequential
    # run's evosynth, draw 1 another draw on the same ancestor, every peer row as in the
    # sequential run where the budget (the most a draw trained) is the same
    par = quick_compare(tmp_path / "jobs", "--jobs", "2", "--draws", "2")
    keys = ("step", "val_accuracy", "test_accuracy", "synapses", "kernel_clusters",
            "macs", "synaptic_efficiency", "cluster_efficiency")

    def cells(rs: list[dict], method: str) -> list[list]:
        return [[r[k] for k in keys] for r in rs if r["method"] == method]

    draw0 = cells(par, "evosynth (defaults, draw 0)")
    assert draw0 == cells(rows, "evosynth (defaults)")
    assert cells(par, "evosynth (defaults, draw 1)") not in ([], draw0)

    def budget(out: Path) -> str:
        return next(line for line in (out / "compare.md").read_text().splitlines()
                    if line.startswith("budget:"))

    # neither quick draw fails a try here, so the most a draw trained is draw 0's budget
    assert budget(tmp_path / "jobs") == budget(tmp_path) + " (the most one draw trained)"
    for method in methods - {"ancestor", "evosynth (defaults)"}:
        assert cells(par, method) == cells(rows, method), method


def test_steps_of_one_shape_share_the_median_time():
    """Many timings of one network shape, each noisy, must not hand the method that has
    many of them the luckiest one."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare import one_time_per_shape

    rows = [{"method": "ancestor", "macs": 100, "filters": 10, "latency_ms": 8.0}]
    rows += [{"method": "a", "macs": 10, "filters": 3, "latency_ms": ms} for ms in (1, 2, 9)]
    rows += [{"method": "b", "macs": 10, "filters": 3, "latency_ms": 4.0}]
    one_time_per_shape(rows)
    assert [r["latency_ms"] for r in rows] == [8.0, 2, 2, 2, 4.0]
    assert [r["speedup"] for r in rows] == [1.0, 4.0, 4.0, 4.0, 2.0]


def test_the_summary_gives_each_draw_against_the_best_peer_and_their_median():
    """One draw is not a result: with several, the ratio quoted is their median, and a
    draw that never reached the level counts as nothing, not as missing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare import floors

    def row(method: str, test: float, eff: float) -> dict:
        return {"method": method, "test_accuracy": test, "val_accuracy": test,
                "synaptic_efficiency": eff, "cluster_efficiency": eff, "speedup": eff}

    rows = [row("ancestor", 0.995, 1.0), row("evosynth (defaults, draw 0)", 0.991, 30.0),
            row("evosynth (defaults, draw 1)", 0.991, 10.0),
            row("evosynth (defaults, draw 2)", 0.989, 50.0),
            row("torch-pruning (L1 magnitude)", 0.992, 10.0),
            row("torch-pruning (L1 magnitude)", 0.991, 20.0)]
    text = floors(rows, (0.990,))
    assert "- evosynth / best peer, cluster_efficiency: median 0.50 (draws: 1.50, 0.50, 0.00)" \
        in text
    one = floors([r for r in rows if "draw 1" not in r["method"] and "draw 2" not in r["method"]],
                 (0.990,))
    assert "- evosynth / best peer, speedup: 1.50" in one


def test_unseen_data_benchmark_runs_side_by_side(tmp_path):
    """The defaults on a data set they were not tuned on (scikit-learn's wine), against
    each Torch-Pruning criterion at evosynth's budget: every result held the floor."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "unseen.py"), "--data",
                        "wine", "--seeds", "0", "--out", str(tmp_path)], capture_output=True,
                       text=True, check=False, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "unseen.json").read_text())
    assert [row["method"] for row in rows] == [
        "evosynth (defaults)", "torch-pruning (L1 magnitude)", "torch-pruning (L2 group norm)",
        "torch-pruning (Taylor)"]
    floor = json.loads((tmp_path / "wine-s0" / "summary.json").read_text())["floor"]
    assert all(row["val_accuracy"] >= floor and row["epochs"] == rows[0]["epochs"] > 0
               for row in rows)
