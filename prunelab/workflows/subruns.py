"""Sub-runs of a study: run one or reuse it when finished, or (``collect``) only list what is missing.

>>> runs = SubRuns(Path("runs/bar-cpu"), collect=False, quiet=True)
>>> d = runs.get("teacher", lambda d: train(cfg, d, resume=True), label="teacher")
>>> if d is not None: ...                 # finished (just now, or before)
>>> runs.missing                          # labels of the sub-runs a --collect found unfinished

Two processes may work on one study at once (``prunelab experiment NAME`` started twice, e.g. one
thread each on a 2-core machine): a sub-run the other process is training right now (its run
directory is locked) is skipped and listed in ``missing`` and ``busy``; ``--collect`` afterwards
aggregates everything once both have finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def is_done(path: Path) -> bool:
    """A sub-run is finished when it wrote ``result.json``."""
    return (Path(path) / "result.json").exists()


class SubRuns:
    """The sub-run folders of one study under ``root``."""

    def __init__(self, root, *, collect: bool = False, quiet: bool = False):
        self.root, self.collect, self.quiet = Path(root), collect, quiet
        self.missing: list[str] = []
        self.busy: list[str] = []

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        return is_done(self.path(name))

    def get(self, name: str, make: Callable[[Path], object], label: str | None = None) -> Path | None:
        """The finished sub-run ``name``: reused if done; else made with ``make(path)`` (which must
        resume an interrupted run), or, when collecting, recorded as missing (returns None)."""
        d = self.path(name)
        if is_done(d):
            return d
        if self.collect:
            self.missing.append(label or name)
            return None
        from ..errors import RunDirBusyError

        try:
            make(d)
        except RunDirBusyError:  # another process of this study is training it: leave it to that one
            self.missing.append(label or name)
            self.busy.append(label or name)
            self.say(f"{label or name}: being run by another process; skipped here")
            return None
        return d

    def say(self, *a) -> None:
        if not self.quiet:
            print(*a, flush=True)

    @property
    def progress_override(self) -> dict:
        """Config overrides that show (or hide) the trainer's progress bars."""
        return {"train": {"progress": not self.quiet}}
