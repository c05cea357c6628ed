"""What a run says while it runs: one progress display for the whole run, a line per
generation, and TensorBoard scalars. The loop calls it; it never changes the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from .errors import UserError

Mode = Literal["bar", "plain", "quiet"]
SIZE_KEYS = ("synapses", "kernel_clusters", "filters", "compact_params", "compact_macs",
             "latency_ms", "model_bytes", "synaptic_efficiency", "cluster_efficiency")


class RunProgress:
    """``bar``: a bar over generations (k of N, elapsed, time left) with the last generation's
    score and size, and a bar per training phase; ``plain``: a line per generation (logs,
    CI); ``quiet``: nothing. With ``tensorboard``, scalars go to that folder as well."""

    def __init__(self, mode: Mode, generations: int, done: int = 0,
                 tensorboard: str | Path | None = None, log: Callable[[str], None] = print):
        self.mode, self.log = mode, log
        self.bar = (tqdm(total=generations + 1, initial=done, desc="evolution", unit="gen",
                         dynamic_ncols=True) if mode == "bar" else None)
        self.writer = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("TensorBoard logging needs: pip install "
                                "'evosynth[tensorboard]'") from None
            self.writer = SummaryWriter(str(tensorboard))

    @property
    def epoch_bars(self) -> bool:
        return self.mode == "bar"

    def epoch(self, phase: str, epoch: int, loss: float) -> None:
        """After each training epoch of the ancestor or an offspring (``phase``: gen3-0)."""
        if self.writer is not None:
            self.writer.add_scalar(f"loss/{phase}", loss, epoch)

    def generation(self, rec: dict[str, Any], line: str) -> None:
        """After each recorded generation."""
        g, metric = rec["generation"], rec.get("metric", "accuracy")
        if self.writer is not None:
            for key in (f"val_{metric}", f"test_{metric}", *SIZE_KEYS):
                if isinstance(rec.get(key), (int, float)):
                    self.writer.add_scalar(f"generation/{key}", rec[key], g)
            env = rec.get("environment")
            if env:
                self.writer.add_scalar("generation/pressure", env["pressure"], g)
            self.writer.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"val {100 * rec[f'val_{metric}']:.2f}% | "
                                     f"{rec['synapses']:,} synapses | "
                                     f"{rec['kernel_clusters']:,} kernels")
            tqdm.write(line)
        elif self.mode == "plain":
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
