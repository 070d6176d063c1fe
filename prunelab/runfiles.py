"""Reading the files of a run directory: the metrics log and checkpoints.

A low layer (no trainer): analysis, pruning and workflows all read run files through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError


def read_metrics(path) -> list[dict]:
    p = Path(path) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                pass
    return out


def summed_epoch_time(records: list[dict]) -> float:
    """Seconds spent in epochs over all processes of a run, resumed ones included.

    An epoch that was logged twice (a kill between the log line and the checkpoint, then a resume)
    counts once, with its last record.
    """
    last = {(r.get("stage") or "", r.get("epoch")): r.get("epoch_time_s", 0.0) for r in records}
    return float(sum(last.values()))


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
