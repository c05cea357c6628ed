"""The command line: one-line errors with exit code 2, and existing runs never damaged."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evosynth.evolution import HISTORY_KEYS

from .conftest import run_cli, snapshot

QUICK = ["--model", "lenet300", "--dataset", "digits", "--generations", "1", "--epochs", "1",
         "--ancestor-epochs", "1", "--no-progress"]


def cli(monkeypatch, capsys, *args):
    return run_cli(capsys, *args)


@pytest.fixture
def finished_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, _ = cli(monkeypatch, capsys, "evolve", *QUICK, "--out", out)
    assert code == 0, stdout
    return out


def test_evolve_show_and_history_keys(finished_run, monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "show", finished_run)
    assert code == 0 and "| gen |" in out and "best generation" in out
    rows = [json.loads(x) for x in (finished_run / "history.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1]
    for r in rows:
        assert set(HISTORY_KEYS) | {"val_accuracy", "test_accuracy", "layers"} <= set(r)
    # the table shows each generation's recorded numbers
    for r in rows:
        assert f"| {r['generation']} | {100 * r['val_accuracy']:.2f} |" in out


@pytest.mark.parametrize("args,message", [
    (["--model", "nope", "--dataset", "digits"], "unknown model 'nope'"),
    (["--model", "lenet5", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--model", "lenet5", "--dataset", "digits", "--encoding", "magic"], "encoding.kind"),
    (["--model", "lenet5", "--dataset", "mnist", "--data-dir", "{tmp}/empty"], "MNIST"),
    (["--config", "{tmp}/missing.yaml"], "does not exist"),
])
def test_user_mistakes_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr("evosynth.data.mnist.MIRRORS", ("http://127.0.0.1:9/",))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = cli(monkeypatch, capsys, "evolve", *args, "--out", tmp_path / "r")
    assert code == 2
    assert err.startswith("evosynth: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("yaml_text,message", [
    ("encoding: {cluster_factor: 1.5}", "less than or equal to 1"),
    ("encoding: {cluster_factor: 0}", "greater than 0"),
    ("encoding:\n  layers: {conv1: {cluster: -0.2}}", "encoding.layers.conv1.cluster"),
    ("train: {epochs: [1, 2}", "malformed YAML"),
    ("evolution: {generationz: 3}", "generationz"),
])
def test_bad_config(tmp_path, monkeypatch, capsys, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    code, _, err = cli(monkeypatch, capsys, "evolve", "--config", cfg, "--out", tmp_path / "r")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_existing_run_is_never_damaged(finished_run, monkeypatch, capsys):
    before = snapshot(finished_run)
    code, _, err = cli(monkeypatch, capsys, "evolve", *QUICK, "--out", finished_run)
    assert code == 2 and "already exists" in err
    code, _, err = cli(monkeypatch, capsys, "evolve", *QUICK, "--model", "nope", "--force",
                       "--out", finished_run)
    assert code == 2 and "unknown model" in err
    assert snapshot(finished_run) == before


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, _, err = cli(monkeypatch, capsys, "evolve", *QUICK, "--force", "--out", precious)
    assert code == 2 and "is not an evosynth run" in err
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_resume_of_missing_dir(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "resume", tmp_path / "nothing")
    assert code == 2 and "does not exist" in err


def test_console_script_installed():
    script = Path(sys.executable).with_name("evosynth")
    assert script.is_file(), "the evosynth console script is not installed beside python"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "evolve" in r.stdout and "resume" in r.stdout
    r = subprocess.run([str(script), "evolve", "--model", "nope", "--dataset", "digits",
                        "--out", "x"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith("evosynth: error: unknown model")


def test_floor_flags_set_the_floor(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    code, _, err = cli(monkeypatch, capsys, "evolve", *QUICK, "--max-drop", "0.3", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    anc = json.loads((out / "history.jsonl").read_text().splitlines()[0])["val_accuracy"]
    assert summary["floor"] == pytest.approx(anc - 0.3)
