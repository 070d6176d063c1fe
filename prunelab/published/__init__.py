"""Published numbers typed in from the supplementary materials, shipped as CSV files.

Each file says where its numbers come from (a ``source`` column). They are drawn as "published" on
top of prunelab's own results; they are never used as results.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def path(name: str) -> Path:
    p = FOLDER / f"{name}.csv"
    if not p.is_file():
        from ..errors import UnknownNameError

        raise UnknownNameError("published table", name, [q.stem for q in FOLDER.glob("*.csv")])
    return p


def load(name: str):
    """A published table as a pandas DataFrame (``name`` without ``.csv``)."""
    import pandas as pd

    return pd.read_csv(path(name), comment="#")


def names() -> list[str]:
    return sorted(q.stem for q in FOLDER.glob("*.csv"))
