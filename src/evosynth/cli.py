"""The ``evosynth`` command: evolve, resume, show, export, scenes. User mistakes exit 2 with
one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import UserError

# Click's error base, found through a public typer class: typer vendors click in recent
# releases and depends on it in older ones
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class Interrupted(Exception):
    """Ctrl-C during a run: the run directory it left, to say how to continue."""

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evolutionary synthesis of small, fast deep neural networks.")

Encoding = typer.Option(help="cluster (cluster-driven) or synaptic (Darwin baseline)")
Backend = typer.Option(help="where offspring train: local, or ray (evosynth's ray extra)")
RayAddress = typer.Option(help="Ray cluster to join (auto, ray://host:10001); default: a "
                               "local Ray for the run")


@app.command()
def evolve(
    out: Annotated[Path, typer.Option("--out", help="run directory to create")],
    model: Annotated[str | None, typer.Option(
        help="registry model: lenet5, lenet300, resnet56, alexnet-cifar, detectnet, "
             "detectnet-small")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="mnist, digits, cifar10 or kitti")] = None,
    data_dir: Annotated[str | None, typer.Option(help="folder with the data files")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; flags override it")] = None,
    generations: Annotated[int | None, typer.Option(help="generations after the ancestor")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs per offspring")] = None,
    ancestor_epochs: Annotated[int | None, typer.Option(help="ancestor training epochs")] = None,
    encoding: Annotated[str | None, Encoding] = None,
    granularity: Annotated[str | None, typer.Option(
        help="filter, kernel or filter+kernel")] = None,
    max_drop: Annotated[float | None, typer.Option(
        help="the floor: validation score at most this far below the ancestor's")] = None,
    min_accuracy: Annotated[float | None, typer.Option(
        help="the floor: validation score at least this")] = None,
    offspring: Annotated[int | None, typer.Option(help="offspring per generation")] = None,
    population: Annotated[int | None, typer.Option(
        help="the K fittest offspring of a generation become its parents")] = None,
    parents: Annotated[int | None, typer.Option(
        help="parents mated into each offspring (at most the population)")] = None,
    backend: Annotated[str | None, Backend] = None,
    ray_address: Annotated[str | None, RayAddress] = None,
    seed: Annotated[int | None, typer.Option(help="run seed")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue --out if it exists")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
    progress: Annotated[bool, typer.Option(
        help="a live display of the run; --no-progress: one line per generation")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress, only the table")] = False,
    tensorboard: Annotated[str | None, typer.Option(
        help="folder for TensorBoard scalars")] = None,
) -> None:
    """Train an ancestor and evolve it, writing every generation to OUT."""
    from . import api
    from .config import load_config

    overrides: dict[str, Any] = {
        "model": model, "dataset": dataset, "data_dir": data_dir, "seed": seed,
        "device": device, "evolution.generations": generations, "train.epochs": epochs,
        "ancestor_train.epochs": ancestor_epochs, "encoding.kind": encoding,
        "encoding.granularity": granularity, "evolution.offspring": offspring,
        "logging.tensorboard": tensorboard, "evolution.max_drop": max_drop,
        "evolution.min_accuracy": min_accuracy, "evolution.population": population,
        "evolution.parents": parents, "execution.backend": backend,
        "execution.address": ray_address,
    }
    cfg = load_config(config, overrides)
    if resume and force:
        raise UserError("--resume and --force contradict each other; pick one")
    from .rundir import RunDir

    try:
        if resume and RunDir(out).config_path.is_file():
            api.check_resume_settings(out, cfg, config is not None,
                                      [k for k, v in overrides.items() if v is not None])
            api.resume(out, progress=_mode(progress, quiet), execution=cfg.execution)
        else:
            api.run(cfg, out, force=force, progress=_mode(progress, quiet))
    except KeyboardInterrupt:
        raise Interrupted(out) from None
    _show(out)


@app.command("resume")
def resume_cmd(
    run_dir: Annotated[Path, typer.Argument(help="run directory to continue")],
    progress: Annotated[bool, typer.Option(
        help="a live display of the run; --no-progress: one line per generation")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress, only the table")] = False,
    backend: Annotated[str | None, Backend] = None,
    ray_address: Annotated[str | None, RayAddress] = None,
) -> None:
    """Continue a run from its last complete generation (same seeds, same result)."""
    from . import api
    from .rundir import RunDir

    _existing_run(run_dir)
    execution = None
    if backend is not None or ray_address is not None:
        execution = _execution(RunDir(run_dir).config().execution, backend, ray_address)
    try:
        api.resume(run_dir, progress=_mode(progress, quiet), execution=execution)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    _show(run_dir)


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    format: Annotated[str, typer.Option("--format", help="md, csv or json")] = "md",
) -> None:
    """Print the per-generation table of a run."""
    from .report import FORMATS

    if format not in FORMATS:
        raise UserError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    _existing_run(run_dir)
    _show(run_dir, format)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one or more run directories")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: "
                                                  "<first run>/report.html)")] = None,
) -> None:
    """One self-contained HTML page: summary, plots, layers, architecture, config."""
    from .report_html import write_report

    for r in run_dirs:
        _existing_run(r)
    typer.echo(f"wrote {write_report(run_dirs, out)}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    format: Annotated[str, typer.Option("--format", help="onnx or safetensors")] = "onnx",
    generation: Annotated[int | None, typer.Option(help="default: the run's best")] = None,
    out: Annotated[Path | None, typer.Option(help="output file (default: in the run)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
    data_dir: Annotated[str | None, typer.Option(
        help="where the run's data lies now, if it moved (default: as the run recorded)")
    ] = None,
) -> None:
    """Write a generation's compact network (dead filters and channels removed)."""
    from .api import export_run

    _existing_run(run_dir)
    written, note = export_run(run_dir, format, generation, out, force, data_dir)
    typer.echo(f"wrote {', '.join(map(str, written))}{note}")


@app.command()
def scenes(
    out: Annotated[Path, typer.Argument(help="folder to write training/ and testing/ into")],
    mnist_dir: Annotated[str | None, typer.Option(help="MNIST IDX files")] = None,
    train: Annotated[int, typer.Option(help="training scenes")] = 2000,
    test: Annotated[int, typer.Option(help="test scenes")] = 500,
    digits: Annotated[str, typer.Option(help="digits to detect, comma-separated; the "
                                                "others appear as DontCare")] = "0,1,2",
    size: Annotated[int, typer.Option(help="canvas side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="seed of every draw")] = 0,
) -> None:
    """Write detection scenes of real MNIST digits in the KITTI object format."""
    from .data.mnist import load_mnist_arrays
    from .detection.scenes import NAMES, write_scenes

    try:
        wanted = tuple(int(d) for d in digits.split(","))
    except ValueError:
        raise UserError(f"--digits {digits!r}: expected digits separated by commas") from None
    if not wanted or not all(0 <= d <= 9 for d in wanted):
        raise UserError(f"--digits {digits!r}: digits are 0-9")
    if (out / "training").exists() or (out / "testing").exists():
        raise UserError(f"{out} already holds scenes; choose another folder")
    for split, prefix, n, s in (("training", "train", train, seed),
                                ("testing", "t10k", test, seed + 1)):
        images, labels = load_mnist_arrays(mnist_dir, prefix)
        write_scenes(out, images, labels, n, split=split, size=size, digits=wanted, seed=s)
    typer.echo(f"wrote {train} training and {test} test scenes to {out}; classes: "
               + ", ".join(NAMES[d] for d in wanted))


def _execution(base: Any, backend: str | None, address: str | None) -> Any:
    """The run's execution settings with the command line's over them."""
    from .config import validate

    over = {k: v for k, v in (("backend", backend), ("address", address)) if v is not None}
    return validate({"execution": {**vars(base), **over}}, "command line").execution


def _mode(progress: bool, quiet: bool) -> str:
    return "quiet" if quiet else "bar" if progress else "plain"


def _existing_run(run_dir: Path) -> None:
    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory")


def _show(run_dir: Path, fmt: str = "md") -> None:
    from .report import render_history
    from .rundir import RunDir

    rd = RunDir(run_dir)
    typer.echo(render_history(rd.history(), rd.summary(), fmt))


def _usage_line(exc: Exception) -> str:
    """Click's usage errors (a box of several lines under typer) as one line."""
    msg = " ".join(exc.format_message().split())
    param = getattr(exc, "param", None)
    if param is not None and getattr(param, "opts", None) and ": " in msg:
        msg = f"{param.opts[0]}: " + msg.split(": ", 1)[-1]
    return msg


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        _fail(str(exc))
    except _CLICK_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``evosynth``: the help
            typer.echo(exc.ctx.get_help() if exc.ctx else "evosynth --help", err=True)
            sys.exit(2)
        _fail(_usage_line(exc))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("evosynth: interrupted", err=True)
        sys.exit(130)
    except Interrupted as exc:
        typer.echo(f"evosynth: interrupted; 'evosynth resume {exc}' continues", err=True)
        sys.exit(130)
    except PermissionError as exc:
        if os.environ.get("EVOSYNTH_DEBUG"):  # the traceback, for reports of a bug
            raise
        _fail(f"permission denied: {exc.filename}")
    except OSError as exc:
        if os.environ.get("EVOSYNTH_DEBUG"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}")
    if code == 130:  # Ctrl-C outside a run (typer turns it into exit code 130)
        typer.echo("evosynth: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    typer.echo(f"evosynth: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
