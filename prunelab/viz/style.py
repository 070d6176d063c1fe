"""Figure style, scale labels and saving (no hidden global state beyond matplotlib's style)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

STYLE = Path(__file__).with_name("prunelab.mplstyle")
SCALE_TEXT = {"ci": "ci scale (tiny smoke data)", "cpu": "cpu scale (real CIFAR-10, short schedules)",
              "paper": "paper scale", "published": "published numbers", "closed form": "closed form"}


def use_style() -> None:
    """Apply prunelab's matplotlib style (call once per notebook)."""
    plt.style.use(str(STYLE))


def scale_label(scale: str) -> str:
    """Human-readable scale tag for titles, e.g. ``[cpu scale (real CIFAR-10, short schedules)]``."""
    return f"[{SCALE_TEXT.get(scale, scale)}]"


def title_with_scale(ax, title: str, scale: str):
    """Set ``ax``'s title with the scale it was computed at on a second line; returns ``ax``."""
    ax.set_title(f"{title}\n{scale_label(scale)}")
    return ax


def output_dir(subdir: str = "") -> Path:
    """Where figures go: ``$PRUNELAB_OUT`` or ``out/figures`` (relative to the working directory)."""
    base = Path(os.environ.get("PRUNELAB_OUT", "out/figures"))
    return base / subdir if subdir else base


def save_figure(fig, name: str, subdir: str = "", formats=("png",)) -> list[Path]:
    """Save ``fig`` as ``<output_dir>/<subdir>/<name>.<fmt>`` with fixed metadata (byte-stable files)."""
    folder = output_dir(subdir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = folder / f"{name}.{fmt}"
        meta = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
        fig.savefig(p, format=fmt, metadata=meta)
        paths.append(p)
    return paths
