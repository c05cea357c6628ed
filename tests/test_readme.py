"""The README's Python example runs as written, and its first lines are the set-up commands."""

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "api-example" / "history.jsonl").is_file()


def test_readme_ask_tell_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "Synthesis(" in b)
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "readme"}
    exec(compile(example, "README.md", "exec"), scope)
    run = tmp_path / "runs" / "ask-tell"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in history] == list(range(len(history)))
    assert len(history) > 1 and all(len(r["offspring"]) == 2 for r in history[1:])
    assert all(r["test_accuracy"] is not None for r in history)
    # the best network holds its masks, and the told fitness is what it scores
    model, masks = scope["model"], scope["masks"]
    assert (model[1].weight[~masks["1"]] == 0).all()
    best = history[json.loads((run / "summary.json").read_text())["best_generation"]]
    assert scope["accuracy"](model, scope["xv"], scope["yv"]) == best["val_accuracy"]


def test_readme_opens_with_install_and_test_commands():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    lines = first.strip().splitlines()
    assert "pip install" in lines[0] and "evosynth evolve" in lines[0]
    assert "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "python -m pytest -q" in lines[1]
