"""Reading the files of a run directory: the metrics log and checkpoints.

A low layer (no trainer): analysis, pruning and workflows all read run files through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError


def read_metrics(path) -> list[dict]:
    """The epoch records of ``metrics.jsonl``. A last line cut by a kill is skipped silently (a resume
    rewrites it); any other line that is not a JSON record (a damaged file) is skipped with a warning
    naming the file and how many lines were lost, so curves drawn from it are never silently empty."""
    p = Path(path) / "metrics.jsonl"
    if not p.exists():
        return []
    out, bad = [], 0
    lines = [ln.strip() for ln in p.read_bytes().decode("utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif i < len(lines) - 1 or not out:  # not just the last line cut by a kill
            bad += 1
    if bad:
        import warnings

        warnings.warn(f"{p}: {bad} of {len(lines)} lines are not JSON records and were skipped; curves and "
                      f"summaries read from this run miss them (restore the file, or rerun the run)",
                      RuntimeWarning, stacklevel=2)
    return out


def read_record(path, what: str = "record") -> dict:
    """A JSON object from a run file (``result.json``, ``pipeline.json``); a missing, corrupt or
    non-object file gives one line (:class:`~prunelab.errors.RunDirError`) naming it."""
    from .errors import RunDirError

    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is corrupt ({type(e).__name__}); restore it, or rerun the {what} with "
                          f"--resume/--force") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} is not a {what} (a JSON object was expected); restore it, or rerun with --force")
    return data


def summed_epoch_time(records: list[dict]) -> float:
    """Seconds spent in epochs over all processes of a run, resumed ones included.

    An epoch that was logged twice (a kill between the log line and the checkpoint, then a resume)
    counts once, with its last record.
    """
    last = {(str(r.get("stage") or ""), str(r.get("epoch"))): r.get("epoch_time_s", 0.0) for r in records}
    return float(sum(v for v in last.values() if isinstance(v, (int, float)) and not isinstance(v, bool)))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file gives one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} could not be read ({msg[:200]}); it is corrupt or not "
                              f"a prunelab checkpoint") from None
