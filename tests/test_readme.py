"""The README's Python example runs as written, and its first lines are the set-up commands."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "api-example" / "history.jsonl").is_file()


def test_readme_opens_with_install_and_test_commands():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    lines = first.strip().splitlines()
    assert "pip install" in lines[0] and "evosynth evolve" in lines[0]
    assert "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "python -m pytest -q" in lines[1]
