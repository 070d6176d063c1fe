"""Small shared helpers: atomic writes, file locks, seeding, JSON."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a process killed mid-write) never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def tree_size(path) -> int:
    """Bytes held by the files under ``path`` (0 if it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def move_aside(path, *, what: str = "run") -> Path:
    """Rename ``path`` to a new ``<name>.old-<date>-<time>[-k]`` beside it and return that name.

    The name is unique even for two calls in one second. Before moving anything, the free space
    beside it must hold another copy of its size (the run that replaces it will need about as
    much): otherwise one line says so and nothing moves.
    """
    import shutil
    import time

    from .errors import RunDirError

    path = Path(path)
    need = tree_size(path)
    free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
    if free < need:
        raise RunDirError(f"--force: only {free / 2**20:.0f} MiB free beside {path}, and the {what} it replaces "
                          f"holds {need / 2**20:.0f} MiB; free some space or write to another --out (nothing moved)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    k = 1
    while True:
        backup = path.with_name(f"{path.name}.old-{stamp}" + (f"-{k}" if k > 1 else ""))
        try:
            # mkdir claims the name atomically; the rename then replaces the empty folder
            backup.mkdir()
        except FileExistsError:
            k += 1
            continue
        try:
            os.replace(path, backup)
        except OSError:
            backup.rmdir()
            raise
        return backup


def git_commit(path=None) -> str | None:
    """The short commit of the repository holding ``path`` (default: this package), with ``+dirty``
    when its tracked files have uncommitted changes; None outside a git checkout."""
    import subprocess

    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def dumps_json(obj, indent: int | None = None) -> str:
    """``obj`` as strict JSON (numpy values converted; NaN and infinities, which JSON cannot hold, as null)."""
    return json.dumps(_finite_or_null(to_jsonable(obj)), indent=indent, allow_nan=False)


def write_json(path, obj, indent: int = 1) -> None:
    """Atomically write ``obj`` as JSON (see :func:`dumps_json`): the file is always valid JSON."""
    atomic_write_text(path, dumps_json(obj, indent) + "\n")


def _finite_or_null(obj):
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_null(v) for v in obj]
    return obj


def read_json(path):
    with open(path) as f:
        return json.load(f)


def to_jsonable(obj):
    """Convert numpy/torch scalars and arrays, tuples and Paths into JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # torch tensors
        return obj.tolist()
    return obj


@contextlib.contextmanager
def file_lock(path, blocking: bool = True):
    """An exclusive ``flock`` on ``path`` for the duration of the block.

    The kernel releases it when the process dies, even on SIGKILL, so a stale lock never blocks.
    Raises ``BlockingIOError`` when ``blocking`` is False and another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield f
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, stable across runs and platforms."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def mean_pairwise_jaccard(masks) -> float:
    """Mean Jaccard similarity |A ∩ B| / |A ∪ B| of the rows of a boolean matrix (n x C), over all
    pairs of different rows (two empty rows count as identical, 1). One matrix product: the
    intersections are ``M M^T``, the unions ``|A| + |B| - |A ∩ B|``."""
    m = np.asarray(masks, dtype=np.float64)
    n = m.shape[0]
    if n < 2:
        return float("nan")
    inter = m @ m.T
    size = m.sum(1)
    union = size[:, None] + size[None, :] - inter
    jac = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    iu = np.triu_indices(n, 1)
    return float(jac[iu].mean())


# -- output paths: checked before anything is written ------------------------------------------------

def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``Path.exists`` is False below a file too)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _limit(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _check_names(path, what: str, fix: str) -> Path:
    """The absolute form of ``path``, refused when it holds a NUL byte or a name longer than the file
    system allows (asked before any call that would fail on it)."""
    from .errors import PathError

    if "\0" in str(path):
        raise PathError(f"{what} {str(path)!r} contains a NUL byte; {fix}")
    p = Path(os.path.abspath(Path(path).expanduser()))
    anchor = _first_existing(Path(p.anchor))
    name_max, path_max = _limit(anchor, "PC_NAME_MAX", 255), _limit(anchor, "PC_PATH_MAX", 4096)
    for part in p.parts[1:]:
        if len(os.fsencode(part)) > name_max:
            raise PathError(f"{what} {str(path)[:40]}...: the name {part[:24]}... is {len(part)} characters long, "
                            f"more than the file system allows ({name_max}); {fix}")
    if len(os.fsencode(str(p))) >= path_max:
        raise PathError(f"{what} {str(path)[:40]}... is longer than the file system allows ({path_max}); {fix}")
    return p


def check_path(path, what: str = "--out", *, writable: bool = True, fix: str | None = None, shown=None) -> Path:
    """Refuse, with one line naming ``path`` and the fix, a folder the system cannot make or write
    into: a NUL byte, a name longer than the file system allows, a file where a folder must be, or
    (when ``writable``) a read-only or unwritable place. Nothing is created; returns the path.

    ``what`` names where the path came from (``--out``, ``PRUNELAB_CACHE``...); ``fix`` replaces
    the default advice (choose another ``what``); ``shown``, the path the message names (default ``path``)."""
    from .errors import PathError

    fix = fix or f"choose another {what}"
    shown = path if shown is None else shown
    p = _check_names(path, what, fix)
    there = _first_existing(p)
    if not there.is_dir():
        where = "is a file" if there == Path(os.path.abspath(shown)) else f"lies under {there}, which is a file"
        raise PathError(f"{what} {shown} {where}, not a folder; {fix}")
    if writable:
        if os.statvfs(there).f_flag & os.ST_RDONLY:
            raise PathError(f"{what} {shown}: {there} is on a read-only file system; {fix} (nothing was written)")
        if not os.access(there, os.W_OK | os.X_OK):
            raise PathError(f"{what} {shown}: permission denied writing in {there}; {fix} or make it writable")
    return Path(path)


def check_output_file(path, what: str, fix: str | None = None) -> Path:
    """:func:`check_path` for a file to write (its folder is made when missing): a folder at ``path``
    is refused as well."""
    from .errors import PathError

    fix = fix or f"choose another {what}"
    p = _check_names(path, what, fix)
    if p.is_dir():
        raise PathError(f"{what} {path} is a folder; give a file name (e.g. {Path(path) / 'results.json'})")
    check_path(p.parent, what, fix=fix, shown=path)
    return Path(path)


def force_refusal(path) -> str | None:
    """Why ``--force`` must not move ``path`` aside, or None: it is the current folder or one above it
    (the command would pull its own working folder away), the home folder, or it holds this package."""
    p = Path(path).resolve()
    cwd = Path.cwd().resolve()
    package = Path(__file__).resolve().parent
    if p == cwd or p in cwd.parents:
        return "the current folder" if p == cwd else "a folder above the current one"
    if p == Path.home().resolve():
        return "the home folder"
    if p in package.parents:
        return "the folder that holds the prunelab package"
    return None


def make_dirs(path, what: str = "--out") -> None:
    """``mkdir -p path``; a folder that cannot be made gives one line, and the folders this call made
    before failing are removed again (a refused start leaves nothing on disk)."""
    from .errors import PathError

    path = Path(path)
    made = []
    try:
        for d in [*reversed(path.parents), path]:
            if not d.is_dir():
                d.mkdir()
                made.append(d)
    except OSError as e:
        failed = e.filename or d
        for m in reversed(made):
            with contextlib.suppress(OSError):
                m.rmdir()
        why = (e.strerror or type(e).__name__).lower()
        raise PathError(f"{what} {path}: cannot create {failed} ({why}); choose another {what}") from None
