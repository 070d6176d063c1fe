"""Executors: where a study's sub-runs (:class:`~.tasks.Task`) execute.

Every executor has the same four methods, and the study runner (:mod:`.runner`) uses nothing else:

* ``submit(task) -> handle`` — start ``task`` (it may queue);
* ``wait(handles, timeout=None) -> list`` — block until at least one of ``handles`` finished (or the
  timeout passed) and return the finished ones;
* ``result(handle) -> str`` — the run directory of a finished task, or raise :class:`~.tasks.TaskFailed`
  (with the log path) / :class:`~prunelab.errors.RunDirBusyError` (another process holds it);
* ``close()``.

``slots`` says how many tasks it runs at once (the runner submits no more than that).

Executors here: :class:`SequentialExecutor` (in this process, one after another: the default with one
worker, and what tests compare against) and :class:`LocalExecutor` (a pool of worker processes on this
machine: one GPU per worker when CUDA devices are visible, else the CPU threads split between workers).
Ray and Slurm (submitit) executors live in :mod:`.engines`; they import their engine only when built.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

from .tasks import Task, TaskFailed, execute, write_task

BUSY_EXIT = 3


def visible_gpus() -> list[str]:
    """The CUDA device ids this process may hand out (``CUDA_VISIBLE_DEVICES`` if set, else every device
    torch sees; none without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # no torch / broken driver: plan for the CPU
        return []


def split_threads(total: int, workers: int) -> int:
    """CPU threads per worker when ``workers`` share ``total`` cores (at least 1): side-by-side jobs must
    not oversubscribe, or OpenMP barriers stall them all."""
    return max(1, total // max(1, workers))


class SequentialExecutor:
    """Runs each task in this process when submitted (no parallelism, no subprocess): the reference
    behaviour, and the executor of ``--workers 1``."""

    slots = 1

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def submit(self, task: Task):
        import torch

        fut: cf.Future = cf.Future()
        # in this process: the threads it already has (OMP_NUM_THREADS / torch's default) unless told
        task = dataclasses.replace(task, cpus=self.threads or torch.get_num_threads())
        try:
            fut.set_result(_execute_logged(task))
        except BaseException as e:  # reported through result(), like the pool's
            fut.set_exception(e)
        fut.task = task
        return fut

    def wait(self, handles, timeout=None):
        return [h for h in handles if h.done()]

    def result(self, handle) -> str:
        return _result(handle)

    def close(self):
        pass


def _execute_logged(task: Task) -> str:
    from ..errors import RunDirBusyError

    try:
        return execute(task)
    except RunDirBusyError:
        raise
    except Exception as e:
        import traceback

        Path(task.log).parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "a") as f:
            traceback.print_exc(file=f)
        raise TaskFailed(task.name, task.log, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _result(handle) -> str:
    return handle.result()


class LocalExecutor:
    """A pool of ``workers`` processes on this machine; each task runs as
    ``python -m prunelab.experiments.tasks`` with its output in ``task.log``.

    With CUDA devices visible, worker *i* gets GPU ``i mod n`` through ``CUDA_VISIBLE_DEVICES`` (one
    sub-run per GPU: ``workers`` defaults to the number of GPUs); on CPU each worker gets
    ``cpu_count // workers`` threads (``OMP_NUM_THREADS``)."""

    def __init__(self, workers: int | None = None, *, gpus: list[str] | None = None, cpu_count: int | None = None):
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self.slots = workers or (len(self.gpus) or 1)
        if self.slots < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.threads = split_threads(cpu_count or os.cpu_count() or 1, self.slots)
        self._free = list(range(self.slots))
        self._lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="prunelab-worker")

    def _env(self, slot: int) -> dict:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)] if self.gpus else ""
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _run(self, task: Task) -> str:
        with self._lock:
            slot = self._free.pop(0)
        try:
            task = dataclasses.replace(task, cpus=self.threads, gpus=1 if self.gpus else 0)
            path = write_task(task, Path(task.log).with_suffix(".task.pkl"))
            Path(task.log).parent.mkdir(parents=True, exist_ok=True)
            with open(task.log, "a") as log:
                rc = subprocess.call([sys.executable, "-m", "prunelab.experiments.tasks", str(path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self._env(slot))
        finally:
            with self._lock:
                self._free.append(slot)
        if rc == BUSY_EXIT:
            from ..errors import RunDirBusyError

            raise RunDirBusyError(f"{task.run_dir} is being run by another process")
        if rc != 0:
            raise TaskFailed(task.name, task.log, f"worker exited with code {rc}")
        return task.run_dir

    def submit(self, task: Task):
        fut = self._pool.submit(self._run, task)
        fut.task = task
        return fut

    def wait(self, handles, timeout=None):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle) -> str:
        return _result(handle)

    def close(self):
        self._pool.shutdown(wait=True)


def make_executor(name: str = "local", *, workers: int | None = None, options: dict | None = None):
    """The executor called ``name`` (local, ray or slurm) with ``workers`` slots; ``options`` go to the
    engine (Ray: ``address``; Slurm: partition, time, gpus, ...)."""
    from ..errors import ConfigError

    options = dict(options or {})
    if name == "local":
        if workers == 1 and not visible_gpus():
            return SequentialExecutor()
        return LocalExecutor(workers)
    if name in ("ray", "slurm"):
        from . import engines

        return engines.make(name, workers=workers, **options)
    raise ConfigError(f"unknown executor {name!r}: use local, ray or slurm")
