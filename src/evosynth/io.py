"""File I/O of a run: atomic writes, and reads that turn a damaged file into one clear line.

A crash mid-write leaves the old file or the new one, never half. Nothing here unpickles:
tensors are safetensors, records JSON.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError

# Fault injection for the kill tests: EVOSYNTH_KILL_AT="<point>:<n>" kills the process with
# SIGKILL the n-th time (1-based) it passes ``fault_point(<point>)``. Unset, it costs a lookup.
_KILL_ENV = "EVOSYNTH_KILL_AT"
_ONCE_ENV = "EVOSYNTH_KILL_ONCE"  # a file: the kill happens only if it does not exist yet
_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A place where a crash must leave a resumable run (see the fault-injection tests)."""
    spec = os.environ.get(_KILL_ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth):
        once = os.environ.get(_ONCE_ENV)  # across processes (a retried Ray worker): one kill
        if once:
            try:
                Path(once).touch(exist_ok=False)
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename. The
    file gets the mode the user's umask gives new files (mkstemp's 0600 would not)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        fault_point("before-rename")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path,
                     metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def save_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """Tensors and a JSON description in one safetensors file, written atomically."""
    save_safetensors(tensors, path, metadata={"evosynth": json.dumps(meta)})


def read_state(path: Path, hint: str = "delete it to redo that phase"
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What ``save_state`` wrote, or one line naming a damaged file."""
    tensors = read_safetensors(path, hint)
    try:
        with safe_open(str(path), "pt") as f:
            return tensors, json.loads((f.metadata() or {})["evosynth"])
    except (KeyError, ValueError) as exc:
        raise damaged(path, f"no evosynth state in it ({exc})", hint) from None


def damaged(path: Path, why: str, hint: str) -> UserError:
    return UserError(f"{path} is damaged ({why}); {hint}")


def read_json(path: Path, hint: str = "restore it or start the run again") -> Any:
    """A JSON file, or one line naming it when it is unreadable or corrupt."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, f"not valid JSON: {str(exc).splitlines()[0]}", hint) from None


def read_safetensors(path: Path, hint: str = "restore it or start the run again"
                     ) -> dict[str, torch.Tensor]:
    """A safetensors file, or one line naming it when it is truncated or not safetensors."""
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise damaged(path, f"not a readable safetensors file: {str(exc).splitlines()[0]}",
                      hint) from None
