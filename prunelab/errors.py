"""Exceptions that the CLI turns into one clear line (and exit code 2).

Every error raised on bad user input derives from :class:`PrunelabError`; its message names the
problem and, where there is one, the fix. Tracebacks are reserved for bugs.
"""

from __future__ import annotations

import difflib


class PrunelabError(Exception):
    """Base class for user-facing errors (bad config, missing data, incompatible checkpoint...)."""


class ConfigError(PrunelabError, ValueError):
    """A configuration value or key is invalid."""


class DataError(PrunelabError):
    """A dataset is missing, corrupt or at an unexpected place."""


class CheckpointError(PrunelabError):
    """A checkpoint is missing, corrupt or belongs to another model/config."""


class RunDirError(PrunelabError):
    """A run directory cannot be used (exists, locked by another process, ...)."""


class PathError(PrunelabError):
    """A path to write (an output folder or file, a cache folder) cannot be used: it lies under a
    file, its name is too long, its file system is read-only, it is the current folder..."""


class RunDirBusyError(RunDirError):
    """Another process holds the run directory's lock (it is training that run right now)."""


class TrainingDivergedError(PrunelabError):
    """The loss became NaN or infinite; the run keeps its last good checkpoint."""


class UnknownNameError(PrunelabError, KeyError):
    """An unknown registry name (model, method, schedule...)."""

    def __init__(self, kind: str, name: str, valid):
        valid = sorted(valid)
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        plural = kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid {plural}: {', '.join(valid)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


def suggest(name: str, valid) -> str:
    """Return ' Did you mean X?' for the closest valid name, or ''."""
    close = difflib.get_close_matches(str(name), sorted(valid), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""
