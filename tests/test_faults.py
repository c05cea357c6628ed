"""Kill -9 anywhere, resume, get exactly the uninterrupted run (all tensors, all records)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .conftest import cli_process, uninterrupted_run

CONFIG = """\
model: lenet300
dataset: digits
ancestor_train: {epochs: 2}
train: {epochs: 2}
evolution: {generations: 2, offspring: 2, max_drop: null}
measure: {costs: false}
"""
TIMINGS = ("wall_seconds",)


evosynth = cli_process


def contents(run: Path) -> tuple[dict, list]:
    """Every tensor of every generation, and the history without its timings."""
    tensors = {}
    for f in sorted(run.glob("generations/*/*.safetensors")):
        for k, v in load_file(str(f)).items():
            tensors[(f.parent.name, f.name, k)] = v
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
               for line in (run / "history.jsonl").read_text().splitlines()]
    return tensors, history


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, tuple[dict, list]]:
    cfg, run = uninterrupted_run(tmp_path_factory.mktemp("faults"), CONFIG)
    return cfg, contents(run)


# ancestor: epochs 1-2; generation 1: offspring 0 epochs 3-4, offspring 1 epochs 5-6;
# generation 2: 7-10. Atomic renames happen for every file written.
KILL_POINTS = ["epoch:1", "epoch:4", "epoch:5", "epoch:8", "before-rename:2",
               "before-rename:9", "before-rename:17", "generation-written:2"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path, point):
    cfg, (tensors, history) = reference
    out = tmp_path / "cut"
    r = evosynth("evolve", "--config", cfg, "--out", out, "--no-progress", kill_at=point)
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
    r = evosynth("resume", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    got_tensors, got_history = contents(out)
    assert got_history == history
    assert got_tensors.keys() == tensors.keys()
    for k, v in tensors.items():
        assert bool((got_tensors[k] == v).all()), (point, k)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.partial"))
    assert not list((out / "checkpoints").glob("*")) if (out / "checkpoints").exists() else True


def test_ctrl_c_says_how_to_continue(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "evosynth.cli", "evolve", "--config", str(cfg),
                          "--out", str(out), "--no-progress"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         # a shell's background job ignores SIGINT, and so would Python
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (out / "checkpoints").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert err.strip().splitlines() == [f"evosynth: interrupted; 'evosynth resume {out}' "
                                        "continues"]
    r = evosynth("resume", out, "--no-progress")
    assert r.returncode == 0, r.stderr


def test_resume_takes_the_recorded_thread_count(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "r"
    r = evosynth("evolve", "--config", cfg, "--out", out, "--no-progress", kill_at="epoch:3")
    assert json.loads((out / "run.json").read_text())["threads"] == 1
    env = {k: v for k, v in os.environ.items() if k != "EVOSYNTH_KILL_AT"}
    env["OMP_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-m", "evosynth.cli", "resume", str(out),
                        "--no-progress"], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "resuming with 1 threads" in r.stdout


RETRY_CONFIG, RETIRE_CONFIG, THIN_CONFIG = (
    CONFIG.replace("max_drop: null", "max_drop: null, min_accuracy: 0.9999, "
                   f"environment: {{retire: {n}, thin: {thin}}}")
    for n, thin in ((0, "false"), (1, "false"), (0, "true")))


# ancestor: epochs 1-2; try 0: 3-6, try 1: 7-10, try 2: 11-14 (then, with retire, a layer
# retires; with thin, the synapse phase), try 3: 15-18, ...
@pytest.mark.parametrize(("config", "kill_at", "tries", "retired"),
                         [(RETRY_CONFIG, "epoch:7", 3, 0), (RETIRE_CONFIG, "epoch:16", 6, 1),
                          (THIN_CONFIG, "epoch:16", 6, 0)])
def test_kill_between_retries_resumes_exactly(tmp_path, config, kill_at, tries, retired):
    """The adaptive environment samples the parent again below the floor (and, with
    ``retire``, retires a layer after a round of failed tries, or with ``thin`` moves on to
    the synapse phase); a kill in a later try resumes with the earlier tries' records and
    gives the uninterrupted run."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    r = evosynth("evolve", "--config", cfg, "--out", tmp_path / "whole", "--no-progress")
    assert r.returncode == 0, r.stderr
    tensors, history = contents(tmp_path / "whole")
    env = history[1]["environment"]
    assert env["tries"] == tries and len(env["retired"]) == retired
    assert env["phase"] == ("synapses" if "thin: true" in config else "clusters")
    r = evosynth("evolve", "--config", cfg, "--out", tmp_path / "cut", "--no-progress",
                 kill_at=kill_at)
    assert r.returncode == -signal.SIGKILL
    assert (tmp_path / "cut" / "checkpoints" / "gen1-attempts.json").is_file()
    r = evosynth("resume", tmp_path / "cut", "--no-progress")
    assert r.returncode == 0, r.stderr
    got_tensors, got_history = contents(tmp_path / "cut")
    assert got_history == history
    assert all(bool((got_tensors[k] == v).all()) for k, v in tensors.items())


def test_kill_while_the_run_is_created_leaves_a_folder_evolve_can_reuse(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "r"
    r = evosynth("evolve", "--config", cfg, "--out", out, "--no-progress",
                 kill_at="before-rename:1")  # config.yaml half-written
    assert r.returncode == -signal.SIGKILL and list(out.iterdir())
    r = evosynth("evolve", "--config", cfg, "--out", out, "--no-progress",
                 kill_at="epoch:1")
    assert r.returncode == -signal.SIGKILL and (out / "run.json").is_file()
