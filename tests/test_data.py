import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunelab.data import cifar as cifar_mod
from prunelab.data.cifar import ARCHIVE_NAME, holdout_split, load_cifar10, subset_per_class
from prunelab.data.loader import CifarLoader, random_crop_flip
from prunelab.errors import DataError


def test_real_cifar10_shapes_and_labels(cifar):
    assert cifar.train_images.shape == (50000, 3, 32, 32) and cifar.train_images.dtype == np.uint8
    assert cifar.test_images.shape == (10000, 3, 32, 32)
    assert np.bincount(cifar.train_labels).tolist() == [5000] * 10
    assert np.bincount(cifar.test_labels).tolist() == [1000] * 10
    # real photographs, not blank or synthetic: per-channel means near CIFAR's published ones
    sample = cifar.train_images[::10]  # every class (the arrays are sorted by class)
    mean = sample.reshape(len(sample), 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(mean, cifar_mod.MEAN, atol=0.03)


def test_second_load_is_fast(cifar):
    cifar_mod._MEMO.clear()
    t = time.time()
    d = load_cifar10()
    assert time.time() - t < 1.0
    assert d.train_labels[123] == cifar.train_labels[123]


def test_missing_data_names_where_it_looked(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "PRUNELAB_DATA" in msg and "\n" not in msg


def test_wrong_checksum_is_refused(tmp_path, monkeypatch):
    src = next(p for p in cifar_mod.search_path() if (p / ARCHIVE_NAME).is_file()) / ARCHIVE_NAME
    bad = tmp_path / ARCHIVE_NAME
    shutil.copy(src, bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="sha256"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "cache" / "cifar10").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def test_official_batches_are_read(tmp_path, monkeypatch, cifar):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        sl = slice((i - 1) * 10000, i * 10000)
        d = {"data": cifar.train_images[sl].reshape(10000, -1), "labels": cifar.train_labels[sl].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(d))
    d = {"data": cifar.test_images.reshape(10000, -1), "labels": cifar.test_labels.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(d))
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    # these batches are re-made from the archive's pixels, so they carry their own md5 sums
    import prunelab.data.cifar as cifar_mod

    monkeypatch.setattr(cifar_mod, "OFFICIAL_MD5", {f.name: cifar_mod._md5(f) for f in folder.iterdir()})
    got = load_cifar10(tmp_path)
    assert got.source == "official"
    assert np.array_equal(got.test_images[:50], cifar.test_images[:50])


class _Payload:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_official_batches_are_unpickled_only_after_their_md5_matches(tmp_path, monkeypatch):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "the-pickle-ran"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="published md5"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_a_damaged_decode_cache_is_rebuilt_with_one_line(tmp_path, monkeypatch, capsys):
    import shutil

    import prunelab.data.cifar as cifar_mod
    from prunelab.data.cifar import ARCHIVE_SHA256, cache_dir

    src = cache_dir() / "cifar10" / f"jpeg-{ARCHIVE_SHA256[:12]}"
    if not (src / "meta.json").exists():
        load_cifar10()  # the real cache, written with its checksums
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    dst = cache_dir() / "cifar10" / f"jpeg-{ARCHIVE_SHA256[:12]}"
    shutil.copytree(src, dst)
    a = np.load(dst / "test_labels.npy")
    a[0] = (a[0] + 1) % 10  # same shape and dtype, one label changed: only the checksum sees it
    np.save(dst / "test_labels.npy", a)
    monkeypatch.setattr(cifar_mod, "_MEMO", {})
    calls = []
    real = cifar_mod._decode_archive
    monkeypatch.setattr(cifar_mod, "_decode_archive", lambda p: calls.append(p) or real(p))
    got = load_cifar10()
    err = capsys.readouterr().err.strip().splitlines()
    assert calls and len(err) == 1 and "checksum" in err[0] and "rebuilding" in err[0]
    assert got.test_labels[0] != a[0]  # the rebuilt cache holds the archive's label again


def test_crop_flip_matches_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 2, g)
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (16,), generator=g)
    dx = torch.randint(0, 5, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    xp = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = xp[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        if flip[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)
    assert 0 < flip.sum() < 16


def test_loader_batches_indices_and_determinism(cifar):
    idx = subset_per_class(cifar.train_labels, 20)
    mk = lambda: CifarLoader(cifar.train_images[idx], cifar.train_labels[idx], idx, batch_size=32, seed=1)
    a, b = mk(), mk()
    xa, ya, ia = next(iter(a))
    assert xa.shape == (32, 3, 32, 32) and xa.dtype == torch.float32
    assert xa.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ya, torch.from_numpy(np.array(cifar.train_labels))[ia])  # indices are dataset indices
    assert set(ia.tolist()) <= set(idx.tolist())
    # same (seed, epoch, step): same batch; resuming at step 3 sees step 3
    assert torch.equal(next(iter(b))[0], xa)
    b3 = list(b.batches(3))[0]
    assert torch.equal(b3[0], list(a.batches(0))[3][0])
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[2], ia)
    assert len(a) == 200 // 32
    # normalisation (without augmentation's black borders): roughly zero-mean, unit-variance per channel
    plain = CifarLoader(cifar.train_images[idx], cifar.train_labels[idx], idx, batch_size=100, train=False)
    x = torch.cat([bt[0] for bt in plain])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.15 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.15


def test_eval_loader_is_ordered_and_complete(cifar):
    ld = CifarLoader(cifar.test_images[:250], cifar.test_labels[:250], batch_size=100, train=False)
    seen = torch.cat([b[2] for b in ld])
    assert seen.tolist() == list(range(250)) and len(ld) == 3


def test_subsets_and_holdout():
    labels = np.repeat(np.arange(10), 100)
    s = subset_per_class(labels, 7, seed=0)
    assert np.bincount(labels[s]).tolist() == [7] * 10
    assert np.array_equal(s, subset_per_class(labels, 7, seed=0))
    assert not np.array_equal(s, subset_per_class(labels, 7, seed=1))
    tr, va = holdout_split(50000, 5000, seed=None)  # PFS: the last 5k
    assert tr[-1] == 44999 and va[0] == 45000 and len(va) == 5000
    tr, va = holdout_split(50000, 0.05, seed=0)  # DDNP: 5% seeded
    assert len(va) == 2500 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 50000
    with pytest.raises(DataError):
        subset_per_class(labels, 101)


def test_holdout_of_class_sorted_data_is_class_balanced():
    # the JPEG archive lists images class by class: "the last 5k" must not be one class
    labels = np.repeat(np.arange(10), 50)
    keep, held = holdout_split(500, 50, seed=None, labels=labels)
    assert np.array_equal(np.bincount(labels[held], minlength=10), np.full(10, 5))
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 500
    for c in range(10):  # the *last* samples of each class are held out
        assert set(held[labels[held] == c]) == set(range(50 * c + 45, 50 * c + 50))
    shuffled = np.random.default_rng(0).permutation(labels)  # official order: the last samples
    assert np.array_equal(holdout_split(500, 50, seed=None, labels=shuffled)[1], np.arange(450, 500))
