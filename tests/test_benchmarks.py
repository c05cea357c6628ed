"""The side-by-side benchmark's quick mode runs end to end and writes its table and plot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compare_quick(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick",
                        "--out", str(tmp_path)], capture_output=True, text=True, check=False,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "compare.json").read_text())
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
