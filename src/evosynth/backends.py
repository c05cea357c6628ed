"""Where a generation's offspring are bred: one after another here, or as Ray tasks.

Both hand back the same offspring for the same jobs (each is a pure function of its job, its
parents and the run), in the order they finish; the driver orders them by index.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .breeding import Breeder, Job, Parent, TrainHooks
from .config import ExecutionConfig
from .errors import UserError
from .train import Teacher


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def parent_bytes(parents: list[Parent]) -> int:
    return sum(tensor_bytes(p.state) + tensor_bytes(p.masks) for p in parents)


def _data_bytes(data: object) -> int:
    return tensor_bytes({k: v for k, v in vars(data).items() if isinstance(v, torch.Tensor)})


class LocalBackend:
    """Offspring bred in this process, with per-epoch checkpoints and progress."""

    name = "local"

    def __init__(self, breeder: Breeder):
        self.breeder = breeder

    def breed(self, jobs: list[Job], population: dict[str, Parent],
              teacher: Teacher | None, hooks: Callable[[Job], TrainHooks],
              desc: Callable[[Job], str]) -> Iterator[Parent]:
        for job in jobs:
            parents = [population[i] for i in job.parents]
            yield self.breeder.offspring(parents, job, teacher, hooks(job), desc(job))

    def close(self) -> None:
        pass


_BREEDERS: dict[str, Breeder] = {}  # per worker process: the run's breeder, unpacked once


def _remote_offspring(run: str, breeder_ref: list[Any], population: dict[str, Parent],
                      job: Job, teacher: Teacher | None, threads: int, gpus: float
                      ) -> Parent:
    """One offspring on a Ray worker, with the thread count the run asked for. The breeder
    (the data, and a traced model) is unpacked once per worker and run, not per task."""
    import ray

    torch.set_num_threads(threads)
    if run not in _BREEDERS:
        _BREEDERS.clear()
        _BREEDERS[run] = ray.get(breeder_ref[0])
    breeder = _BREEDERS[run]
    if gpus > 0 and torch.cuda.is_available():
        breeder.device = torch.device("cuda")  # Ray shows the task its own GPU(s) only
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        breeder.device = torch.device("cpu")
    if teacher is not None:
        teacher = teacher.to(breeder.device)
    return breeder.offspring([population[i] for i in job.parents], job, teacher)


class RayBackend:
    """A generation's offspring as Ray tasks. The breeder (model, data, config) goes into
    the object store once per run, the parents and the teacher once per generation; each
    task returns its offspring's weights, masks and score. A task whose worker dies is
    retried by Ray; being a pure function, it returns the same offspring."""

    name = "ray"

    def __init__(self, breeder: Breeder, cfg: ExecutionConfig,
                 log: Callable[[str], None] = print):
        try:
            import ray
        except ImportError:
            raise UserError("execution.backend ray needs Ray: pip install 'evosynth[ray]'"
                            ) from None
        self.ray, self.cfg = ray, cfg
        self.started = False
        if not ray.is_initialized():
            try:
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot reach Ray at {cfg.address!r}: "
                                f"{str(exc).splitlines()[0]}") from None
            self.started = True
            log(f"started Ray ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)"
                if cfg.address is None else f"joined Ray at {cfg.address}")
        self.task = ray.remote(_remote_offspring).options(
            num_cpus=cfg.cpus_per_offspring, num_gpus=cfg.gpus_per_offspring, max_retries=3)
        self.breeder_ref = ray.put(breeder)
        self.run_id = uuid.uuid4().hex
        self.run_bytes = _data_bytes(breeder.data.train) + _data_bytes(breeder.data.val)
        self.generation_bytes: dict[str, int] = {}  # what moved for the last generation

    def breed(self, jobs: list[Job], population: dict[str, Parent],
              teacher: Teacher | None, hooks: Callable[[Job], TrainHooks],
              desc: Callable[[Job], str]) -> Iterator[Parent]:
        ray = self.ray
        if not jobs:
            return
        used = {i for job in jobs for i in job.parents}
        parents = {i: p for i, p in population.items() if i in used}
        pop_ref = ray.put(parents)
        teacher_ref = ray.put(teacher.cpu() if teacher is not None else None)
        # the breeder's reference inside a list: Ray leaves it to the task to fetch (once)
        pending = [self.task.remote(self.run_id, [self.breeder_ref], pop_ref, job, teacher_ref,
                                    self.cfg.cpus_per_offspring, self.cfg.gpus_per_offspring)
                   for job in jobs]
        back = 0
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                child = ray.get(done[0])
                back += parent_bytes([child])
                yield child
        finally:
            for ref in pending:  # interrupted: do not leave work running
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        teacher_size = (0 if teacher is None else
                        tensor_bytes({"scores": teacher}) if isinstance(teacher, torch.Tensor)
                        else tensor_bytes(teacher.state_dict()))
        self.generation_bytes = {"parents": parent_bytes(list(parents.values())),
                                 "teacher": teacher_size, "offspring": back}

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_backend(breeder: Breeder, cfg: ExecutionConfig, log: Callable[[str], None] = print
                 ) -> Any:
    return RayBackend(breeder, cfg, log) if cfg.backend == "ray" else LocalBackend(breeder)
