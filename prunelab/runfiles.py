"""Reading the files of a run directory: the metrics log and checkpoints.

A low layer (no trainer): analysis, pruning and workflows all read run files through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError


def read_metrics(path) -> list[dict]:
    """The epoch records of ``metrics.jsonl``; lines that are not JSON records (a line cut by a kill,
    a damaged file) are skipped."""
    p = Path(path) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                continue
            if isinstance(rec, dict):
                out.append(rec)
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
