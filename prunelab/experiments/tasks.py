"""One sub-run of a study as a self-contained task that any executor can run anywhere.

A :class:`Task` carries everything a worker needs (the resolved config, the run directory, the log
file, the CPU threads and GPUs it may use) and :func:`execute` runs it. Executors (a local process
pool, Ray, Slurm through submitit: :mod:`.executors`, :mod:`.engines`) only move tasks to workers and
report back; they never look inside one. A task is idempotent: its run directory resumes exactly where
an interrupted attempt stopped, and a finished one (``result.json`` present) returns at once.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import traceback
from pathlib import Path

KINDS = ("train", "pipeline", "iterative")


@dataclasses.dataclass(frozen=True)
class Task:
    """A sub-run to execute: ``kind`` "train" (dense training, :func:`prunelab.workflows.train`),
    "pipeline" (a pruning run, :func:`prunelab.workflows.run_pipeline`) or "iterative" (a chain of
    shrink/retrain steps, :func:`prunelab.workflows.iterative.run_iterative`, told what to shrink and from
    which weights by ``options``) of ``config`` in ``run_dir``, its output appended to ``log``; ``cpus``
    threads and ``gpus`` devices (0: CPU). ``options``: a small JSON-able dict of what the config does
    not hold (only the ``iterative`` kind reads it)."""

    study: str
    name: str
    kind: str
    config: object  # prunelab.config.Config (kept untyped: this module imports no torch)
    run_dir: str
    log: str
    cpus: int = 1
    gpus: int = 0
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")


class TaskFailed(RuntimeError):
    """A sub-run failed; ``log`` is the file with its output and traceback."""

    def __init__(self, name: str, log: str, reason: str):
        super().__init__(f"sub-run {name} failed: {reason} (log: {log})")
        self.name, self.log, self.reason = name, log, reason


def execute(task: Task) -> str:
    """Run ``task`` in this process (resuming its run directory) and return the run directory.

    Threads: ``torch.set_num_threads(task.cpus)``. Devices are chosen by the executor through
    ``CUDA_VISIBLE_DEVICES`` before this process starts; the config's device setting picks CUDA when
    one is visible. Another process holding the run directory's lock raises ``RunDirBusyError``."""
    import torch

    from ..workflows import run_pipeline, train

    torch.set_num_threads(max(1, int(task.cpus)))
    if task.kind == "train":
        train(task.config, task.run_dir, resume=True, quiet=True)
    elif task.kind == "iterative":
        from ..workflows.iterative import run_iterative

        run_iterative(task.config, task.run_dir, dict(task.options), quiet=True)
    else:
        run_pipeline(task.config, task.run_dir, resume=True, quiet=True)
    return task.run_dir


def write_task(task: Task, path) -> Path:
    """Pickle ``task`` to ``path`` (for a worker started as ``python -m prunelab.experiments.tasks PATH``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(task))
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    """Worker entry point: ``python -m prunelab.experiments.tasks TASK.pkl``. Exit code 0 on success, 3 when
    another process holds the run directory, 1 on any other failure (traceback on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    task = pickle.loads(Path(argv[0]).read_bytes())
    from ..errors import RunDirBusyError

    try:
        execute(task)
    except RunDirBusyError as e:
        print(f"busy: {e}", file=sys.stderr, flush=True)
        return 3
    except BaseException:
        traceback.print_exc()
        return 1
    print(f"done: {task.study}/{task.name} in {task.run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
