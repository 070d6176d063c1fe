"""Run directories: one folder per run, safe against overwrites, concurrent writers and kills.

Layout::

    RUN/
      config.yaml      resolved config (what the run actually used)
      metrics.jsonl    one JSON record per epoch (and per stage event)
      checkpoint.pt    latest resumable state, written atomically
      model.pt         final weights with the model's name and arguments
      epoch_K.pt       weight snapshots kept on request (train.keep_epochs)
      arrays/*.npy     arrays for analyses
      .lock            held (flock) by the process writing the run

Rules: an existing run is never overwritten unless ``resume`` (continue it) or ``force`` (move it
aside to ``RUN.old-<time>`` and start again) is given; a second process writing to the same folder
is refused; every file is written through a temporary file and a rename. The folder is checked
(:func:`check_output_dir`) before anything is created: a folder of other files is never written into,
and ``force`` never moves the current folder, one above it or the one holding the package.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import PathError, RunDirBusyError, RunDirError
from ..runfiles import load_checkpoint, read_metrics, summed_epoch_time  # noqa: F401  (re-exported)
from ..utils import (atomic_write_bytes, atomic_write_text, check_path, force_refusal, make_dirs, move_aside,
                     to_jsonable)

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "model.pt", "result.json")
# what a folder may hold and still be a place for a new run: what a start that stopped before its
# first file left behind
START_LEFTOVERS = {".lock", "arrays"}


def is_run(path: Path) -> bool:
    return any((Path(path) / f).exists() for f in RUN_FILES)


def check_output_dir(path, *, force: bool = False, resume: bool = False, option: str = "--out") -> Path:
    """Every check on the folder of a run, before anything is written there (one line each, naming the
    folder and the fix): the path can be made and written (:func:`~prunelab.utils.check_path`);
    ``resume`` (the user asked to continue) needs a run there; ``force`` never moves aside the current
    folder, one above it or the package's; a folder holding other files than a run's is refused.

    The Python API's ``RunDir(resume=True)`` continues a run *if* there is one (studies resume every
    sub-run); only the command line's ``--resume`` insists, through this function's ``resume``."""
    path = Path(path)
    check_path(path, option)
    if resume and not is_run(path):
        why = "does not exist" if not path.exists() else "holds no config.yaml, checkpoint or result"
        raise RunDirError(f"--resume: {path} {why}, so there is no run to continue; drop --resume to start "
                          f"one, or give the run's folder with {option}")
    if not path.is_dir():
        return path
    if is_run(path):
        why = force_refusal(path) if force else None
        if why:
            raise PathError(f"--force would move {path} aside, and it is {why}; give {option} a folder of "
                            f"the run's own (e.g. runs/NAME)")
        return path
    other = sorted(e.name for e in path.iterdir()
                   if e.name not in START_LEFTOVERS and not (e.name.startswith(".") and e.name.endswith(".tmp")))
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise PathError(f"{option} {path} holds files that are not a prunelab run ({shown}); give {option} a new "
                        f"or empty folder (--force only moves an earlier run aside; nothing was touched)")
    return path


class RunDir:
    """An open run directory (holds its lock until :meth:`close`)."""

    def __init__(self, path, *, resume: bool = False, force: bool = False, rank: int = 0, quiet: bool = False):
        self.path = Path(path)
        self.rank = rank
        self.resumed = False
        self._lock_file = None
        if rank != 0:  # only rank 0 writes; the others read the checkpoint
            self.resumed = resume and (self.path / "checkpoint.pt").exists()
            return
        check_output_dir(self.path, force=force)
        self._acquire_lock()
        if is_run(self.path):
            if resume:
                self.resumed = True
            elif force:
                self._release_lock()
                backup = move_aside(self.path)
                if not quiet:
                    print(f"--force: moved the existing run to {backup}")
                self._acquire_lock()
            else:
                self._release_lock()
                raise RunDirError(f"{self.path} already holds a run; pass --resume to continue it, --force to "
                                  f"start over (the old run is moved aside), or --out to write elsewhere")
        (self.path / "arrays").mkdir(parents=True, exist_ok=True)

    # -- locking -----------------------------------------------------------------------------------
    def _acquire_lock(self):
        import fcntl

        make_dirs(self.path)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise RunDirBusyError(f"{self.path} is in use by another process (pid {pid}); wait for it to finish "
                              f"or write to another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def _release_lock(self):
        if self._lock_file is not None:
            import fcntl

            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def close(self):
        self._release_lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- files -------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        if self.rank == 0:
            atomic_write_text(self.path / name, text)

    def log(self, record: dict) -> None:
        """Append one JSON record to ``metrics.jsonl``."""
        if self.rank != 0:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")

    def metrics_size(self) -> int:
        p = self.path / "metrics.jsonl"
        return p.stat().st_size if p.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop records written after a checkpoint (they are replayed on resume)."""
        p = self.path / "metrics.jsonl"
        if self.rank == 0 and p.exists() and p.stat().st_size > size:
            with open(p, "r+") as f:
                f.truncate(size)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def save(self, name: str, obj) -> None:
        """``torch.save`` through a temporary file and a rename."""
        if self.rank != 0:
            return
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(self.path / name, buf.getvalue())

    def load(self, name: str, map_location="cpu"):
        return load_checkpoint(self.path / name, map_location)

    def save_array(self, name: str, array) -> None:
        if self.rank != 0:
            return
        buf = io.BytesIO()
        np.save(buf, np.asarray(array))
        atomic_write_bytes(self.path / "arrays" / f"{name}.npy", buf.getvalue())
