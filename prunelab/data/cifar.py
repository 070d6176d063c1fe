"""CIFAR-10 as uint8 arrays: found, verified, decoded once and cached.

Sources, in the order they are tried in every folder of :func:`search_path`:

1. the official python batches (``cifar-10-batches-py/``, as torchvision downloads them);
2. the offline JPEG archive ``cifar10-jpeg.tar.xz`` (sha256-verified; JPEG re-encoded, so
   accuracies differ slightly from runs on the official pixels).

The decoded arrays are cached as ``.npy`` files under :func:`cache_dir`; a second load memory-maps
them and takes well under a second.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..utils import atomic_write_bytes, file_lock

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

ARCHIVE_NAME = "cifar10-jpeg.tar.xz"
ARCHIVE_SHA256 = "6254f53a1bc70afc08c46178959354e8597763b03706815cc50b5e2cdff16569"
OFFICIAL_DIR = "cifar-10-batches-py"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Cifar10:
    """The whole dataset in memory. Images are uint8 NCHW; labels int64."""

    train_images: np.ndarray  # (50000, 3, 32, 32) uint8
    train_labels: np.ndarray  # (50000,) int64
    test_images: np.ndarray  # (10000, 3, 32, 32) uint8
    test_labels: np.ndarray  # (10000,) int64
    source: str  # "official" or "jpeg-archive"
    path: str

    classes: tuple = CLASSES


def cache_dir() -> Path:
    """Folder for decoded arrays: ``$PRUNELAB_CACHE`` or ``~/.cache/prunelab``."""
    env = os.environ.get("PRUNELAB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunelab"


def search_path(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for CIFAR-10, in order.

    An explicit ``root`` (config ``data.root``) is the only folder searched when given. Otherwise:
    ``$PRUNELAB_DATA``, the ``shared/datasets`` folder beside the repository, then the user cache.
    """
    if root is not None:
        return [Path(root).expanduser()]
    paths = []
    if os.environ.get("PRUNELAB_DATA"):
        paths.append(Path(os.environ["PRUNELAB_DATA"]).expanduser())
    paths += [REPO_ROOT.parent / "shared" / "datasets", REPO_ROOT / "shared" / "datasets", cache_dir()]
    return paths


def _digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return _digest(path, "sha256")


def _locate(root) -> tuple[str, Path]:
    looked = search_path(root)
    for folder in looked:
        if (folder / OFFICIAL_DIR / "data_batch_1").is_file():
            return "official", folder / OFFICIAL_DIR
        if folder.name == OFFICIAL_DIR and (folder / "data_batch_1").is_file():
            return "official", folder
        if (folder / ARCHIVE_NAME).is_file():
            return "jpeg-archive", folder / ARCHIVE_NAME
    where = ", ".join(str(p) for p in looked)
    raise DataError(
        f"CIFAR-10 not found: looked for {OFFICIAL_DIR}/ or {ARCHIVE_NAME} in {where}. "
        f"Set PRUNELAB_DATA (or data.root) to the folder that holds one of them."
    )


# the md5 sums the CIFAR-10 authors publish for the python batches: the batches are pickles, which
# can run code when loaded, so a batch is unpickled only after its md5 matches
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
}


def _md5(path: Path) -> str:
    return _digest(path, "md5")


def _decode_official(folder: Path) -> tuple[np.ndarray, ...]:
    def read(name):
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 batch {path} is missing; re-download the official files.")
        if _md5(path) != OFFICIAL_MD5[name]:
            raise DataError(f"CIFAR-10 batch {path} does not match its published md5 (a pickle is only loaded "
                            f"when it does); re-download the official files.")
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d["labels"], dtype=np.int64)
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
            raise DataError(f"CIFAR-10 batch {path} is corrupt ({e}); re-download the official files.")
        return x, y

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    xt, yt = read("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt


def _decode_archive(path: Path) -> tuple[np.ndarray, ...]:
    from PIL import Image

    digest = _sha256(path)
    if digest != ARCHIVE_SHA256:
        raise DataError(
            f"{path} has sha256 {digest[:12]}..., expected {ARCHIVE_SHA256[:12]}...: the archive is "
            f"corrupt or not the CIFAR-10 JPEG archive; replace it with a fresh copy."
        )
    index = {c: i for i, c in enumerate(CLASSES)}
    items: dict[str, list] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:xz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".jpg"):
                    continue
                split, cls, fname = Path(member.name).parts[-3:]
                data = tar.extractfile(member).read()
                img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
                items[split].append((index[cls], fname, img))
    except (tarfile.TarError, OSError, KeyError, ValueError) as e:
        raise DataError(f"{path} could not be read ({e}); replace it with a fresh copy.")
    out = []
    for split, expected in (("train", 50000), ("test", 10000)):
        rows = sorted(items[split], key=lambda r: (r[0], r[1]))  # class order, then file name
        if len(rows) != expected:
            raise DataError(f"{path} holds {len(rows)} {split} images, expected {expected}; replace it.")
        x = np.stack([r[2] for r in rows]).transpose(0, 3, 1, 2).copy()
        y = np.array([r[0] for r in rows], dtype=np.int64)
        out += [x, y]
    return tuple(out)


_MEMO: dict = {}
CACHE_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
CACHE_SHAPES = {"train_images": (50000, 3, 32, 32), "train_labels": (50000,), "test_images": (10000, 3, 32, 32),
                "test_labels": (10000,)}
CACHE_FORMAT = "prunelab-cifar-cache-1"


def _checksum(a: np.ndarray) -> str:
    """CRC-32 of an array's bytes (fast: the check runs on every first load in a process)."""
    import zlib

    return f"{zlib.crc32(memoryview(np.ascontiguousarray(a)).cast('B')):08x}"


def _write_cache(cdir: Path, files: list[Path], arrays) -> None:
    """Write the decoded arrays and ``meta.json`` (shape, dtype, checksum of each) atomically."""
    import json

    meta = {"format": CACHE_FORMAT, "arrays": {}}
    for f, a in zip(files, arrays):
        buf = io.BytesIO()
        np.save(buf, a)
        atomic_write_bytes(f, buf.getvalue())
        meta["arrays"][f.stem] = {"shape": list(a.shape), "dtype": str(a.dtype), "crc32": _checksum(a)}
    atomic_write_bytes(cdir / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())


def _read_cache(cdir: Path, files: list[Path]):
    """The cached arrays if every one matches the shape, dtype and checksum recorded in ``meta.json``
    (and the expected CIFAR-10 shapes); None when anything is missing or differs."""
    import json

    try:
        meta = json.loads((cdir / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        arrays = []
        for f in files:
            rec = meta["arrays"][f.stem]
            a = np.load(f, mmap_mode="r", allow_pickle=False)
            if (list(a.shape) != rec["shape"] or tuple(a.shape) != CACHE_SHAPES[f.stem] or str(a.dtype) != rec["dtype"]
                    or _checksum(a) != rec["crc32"]):
                return None
            arrays.append(a)
        return arrays
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_cifar10(root: str | os.PathLike | None = None, *, verbose: bool = False) -> Cifar10:
    """Load CIFAR-10 (decoding and caching it on first use).

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``cifar10-jpeg.tar.xz``; default searches
            :func:`search_path`.
        verbose: print where the data came from and how long decoding took.
    """
    source, path = _locate(root)
    key = (source, str(path))
    if key in _MEMO:
        return _MEMO[key]
    tag = "official" if source == "official" else f"jpeg-{ARCHIVE_SHA256[:12]}"
    cdir = cache_dir() / "cifar10" / tag
    files = [cdir / f"{n}.npy" for n in CACHE_NAMES]
    arrays = _read_cache(cdir, files)
    if arrays is None:
        cdir.mkdir(parents=True, exist_ok=True)
        with file_lock(cdir / ".lock"):  # two processes decoding at once: the second waits
            arrays = _read_cache(cdir, files)
            if arrays is None:
                if any(f.exists() for f in files):
                    import sys

                    why = ("do not match their recorded shape, dtype or checksum" if (cdir / "meta.json").exists()
                           else "have no recorded checksums (an older cache)")
                    print(f"prunelab: the cached CIFAR-10 arrays in {cdir} {why}; rebuilding them from {path}",
                          file=sys.stderr)
                t0 = time.time()
                decoded = _decode_official(path) if source == "official" else _decode_archive(path)
                _write_cache(cdir, files, decoded)
                if verbose:
                    print(f"decoded CIFAR-10 from {path} in {time.time() - t0:.1f} s; cached in {cdir}")
                arrays = _read_cache(cdir, files)
                if arrays is None:
                    raise DataError(f"the CIFAR-10 cache in {cdir} could not be written back intact; check the disk "
                                    f"(free space, permissions) or set PRUNELAB_CACHE to another folder")
    _check_labels(cdir, arrays[1], arrays[3])
    data = Cifar10(*arrays, source=source, path=str(path))
    _MEMO[key] = data
    return data


def _check_labels(cdir: Path, train_labels, test_labels) -> None:
    """CIFAR-10 has 10 classes of 5,000 training and 1,000 test images: a cache whose checksums match its
    ``meta.json`` but whose labels do not (written by hand, or by another tool) is refused by name."""
    for split, labels, per in (("training", train_labels, 5000), ("test", test_labels, 1000)):
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=10)
        if len(counts) != 10 or (counts != per).any():
            raise DataError(f"the cached CIFAR-10 {split} labels in {cdir} are not 10 classes of {per} images each "
                            f"(counts {counts.tolist()}); delete that folder to have it decoded again")


def subset_per_class(labels: np.ndarray, k: int, seed: int = 0, num_classes: int = 10, *,
                     key: str = "k per class") -> np.ndarray:
    """Indices of ``k`` seeded random samples of each class, sorted; ``key`` names the setting in the error."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if k < 1 or k > counts.min():
        raise DataError(f"{key} must be in [1, {counts.min()}] (the smallest class has {counts.min()} images), "
                        f"got {k}")
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(idx))


def holdout_split(n: int, size: int | float, seed: int | None = 0, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (train, held-out) index arrays.

    Args:
        size: held-out count, or a fraction of ``n`` when below 1.
        seed: ``None`` holds out the *last* ``size`` samples (PFS's 45k/5k split); an integer draws
            them at random with that seed (DDNP's 5% split uses seed 0).
        labels: the samples' labels. With ``seed=None`` and class-sorted labels (the JPEG archive
            lists images class by class, unlike the official batches, whose order is shuffled) the
            last ``size`` samples would all be of the last class(es); the split then holds out the
            last samples *of every class* in proportion, the class-balanced analogue of "the last 5k".
    """
    count = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < count < n:
        raise DataError(f"held-out size must be between 1 and {n - 1} samples, got {size}")
    if seed is None:
        if labels is not None and len(labels) == n and np.all(np.diff(np.asarray(labels)) >= 0) \
                and len(np.unique(labels)) > 1:
            labels = np.asarray(labels)
            classes, starts, sizes = np.unique(labels, return_index=True, return_counts=True)
            per = np.floor(sizes * count / n).astype(int)
            per[np.argsort(-(sizes * count / n - per), kind="stable")[:count - per.sum()]] += 1  # exact total
            held = np.concatenate([np.arange(st + sz - k, st + sz) for st, sz, k in zip(starts, sizes, per)])
            return np.setdiff1d(np.arange(n), held), np.sort(held)
        return np.arange(n - count), np.arange(n - count, n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[count:]), np.sort(perm[:count])
