"""Your own data: a map-style Dataset or DataLoader as the package's loader, and ``data.builder``.

The data is an ImageFolder of 3 classes of small PNGs whose colour gives the class away (a tiny
ResNet learns it in a few steps), written once per module into a temporary folder, with a builder
module beside it that the configs name.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision import datasets
from torchvision import transforms as T

from prunelab.config import DataConfig, build, load_config
from prunelab.data.adapters import as_loader, call_builder, loaders_from_datasets
from prunelab.errors import ConfigError
from prunelab.train.run import check_resume_config, train

PY = sys.executable
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 100, 20
BUILDER_MODULE = "prunelab_test_colours"
BUILDER = f"{BUILDER_MODULE}:make"

BUILDER_SOURCE = textwrap.dedent('''
    """Builder of the colour ImageFolder (written by tests/test_data_adapters.py)."""
    from torchvision import datasets, transforms as T

    def make(root, augment=True):
        plain = [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))]
        aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
        return {"train": datasets.ImageFolder(f"{root}/train", T.Compose(aug + plain)),
                "test": datasets.ImageFolder(f"{root}/test", T.Compose(plain))}
''')

AUGMENT = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])


def _write_split(folder, per_class, rng):
    for c in range(CLASSES):
        d = folder / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            a[..., c] += 150  # class c is bright in channel c
            Image.fromarray(a).save(d / f"{i:03d}.png")


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Folder holding ``img/{train,test}/class{c}/*.png`` and the builder module."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    _write_split(root / "img" / "train", TRAIN_PER_CLASS, rng)
    _write_split(root / "img" / "test", TEST_PER_CLASS, rng)
    (root / f"{BUILDER_MODULE}.py").write_text(BUILDER_SOURCE)
    return root


@pytest.fixture
def train_ds(colours):
    return datasets.ImageFolder(colours / "img" / "train", AUGMENT)


def _cat(loader, k, start=0):
    return torch.cat([b[k] for b in loader.batches(start)])


# ---------------------------------------------------------------------------------------------------
# the loader


def test_indices_are_the_datasets_and_cover_the_epoch_once(train_ds):
    n = len(train_ds)
    ld = as_loader(train_ds, batch_size=32, train=True, seed=0)
    idx, y = _cat(ld, 2), _cat(ld, 1)
    assert len(ld) == n // 32 and len(idx) == n // 32 * 32  # the incomplete batch is dropped when training
    assert len(set(idx.tolist())) == len(idx) and set(idx.tolist()) <= set(range(n))
    assert torch.equal(y, torch.tensor(train_ds.targets)[idx])  # labels belong to the indices returned
    assert idx.tolist() != sorted(idx.tolist())  # shuffled
    every = as_loader(train_ds, batch_size=32, train=True, seed=0, drop_last=False)
    assert sorted(_cat(every, 2).tolist()) == list(range(n))
    x0, _, i0 = next(iter(ld))
    assert x0.shape == (32, 3, 32, 32) and x0.dtype == torch.float32
    assert x0.is_contiguous(memory_format=torch.channels_last)


def test_eval_loader_is_ordered_complete_and_unchanged(colours):
    ds = datasets.ImageFolder(colours / "img" / "test", T.ToTensor())
    ld = as_loader(ds, batch_size=25, train=False)
    batches = list(ld)
    assert len(ld) == len(batches) == 3 and [len(b[2]) for b in batches] == [25, 25, 10]  # no dropped batch
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(60))
    assert torch.equal(batches[1][0][3], ds[28][0])


def test_same_seed_and_epoch_same_batches_also_after_a_mid_epoch_resume(train_ds):
    a = as_loader(train_ds, batch_size=32, train=True, seed=5)
    b = as_loader(train_ds, batch_size=32, train=True, seed=5)
    a.set_epoch(1)
    b.set_epoch(1)
    full = list(a)
    resumed = list(b.batches(3))  # a run resumed at step 3 of epoch 1 (a fresh loader: no loader state)
    assert len(resumed) == len(full) - 3
    for (xa, ya, ia), (xb, yb, ib) in zip(full[3:], resumed):
        assert torch.equal(ia, ib) and torch.equal(ya, yb)
        assert torch.equal(xa, xb)  # the random crops and flips too
    b.set_epoch(2)
    assert not torch.equal(_cat(b, 2), torch.cat([f[2] for f in full]))  # another epoch, another order
    other = as_loader(train_ds, batch_size=32, train=True, seed=6)
    other.set_epoch(1)
    assert not torch.equal(_cat(other, 2), torch.cat([f[2] for f in full]))


def test_random_transforms_do_not_touch_the_callers_random_streams(train_ds):
    ld = as_loader(train_ds, batch_size=32, train=True, seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    list(ld.batches(7))
    assert torch.equal(torch.get_rng_state(), before)


def test_workers_give_the_same_batches(train_ds):
    plain = as_loader(train_ds, batch_size=32, train=True, seed=1)
    workers = as_loader(train_ds, batch_size=32, train=True, seed=1, num_workers=2)
    for (xa, _, ia), (xb, _, ib) in zip(plain.batches(6), workers.batches(6)):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)


def test_ddp_ranks_split_each_global_batch_disjointly(train_ds):
    whole = as_loader(train_ds, batch_size=32, train=True, seed=2)
    ranks = [as_loader(train_ds, batch_size=16, train=True, seed=2, rank=r, world_size=2) for r in (0, 1)]
    assert len(whole) == len(ranks[0]) == len(ranks[1])
    for (xw, _, iw), (x0, _, i0), (x1, _, i1) in zip(whole.batches(7), *(r.batches(7) for r in ranks)):
        assert len(i0) == len(i1) == 16 and not set(i0.tolist()) & set(i1.tolist())
        assert sorted(i0.tolist() + i1.tolist()) == sorted(iw.tolist())
        row = {i: k for k, i in enumerate(iw.tolist())}
        assert torch.equal(x0, xw[[row[i] for i in i0.tolist()]])  # a sample's crop does not depend on the rank


def test_a_dataloader_gives_its_dataset_and_collate_but_not_its_sampler(train_ds):
    calls = []

    def collate(samples):
        calls.append(len(samples))
        return torch.utils.data.default_collate(samples)

    dl = DataLoader(train_ds, batch_size=7, shuffle=True, drop_last=False, collate_fn=collate)
    ld = as_loader(dl, batch_size=32, train=True, seed=3)
    got = list(ld)
    assert calls == [32] * len(ld) and len(ld) == len(train_ds) // 32  # our batch size, the user's collate
    same = as_loader(train_ds, batch_size=32, train=True, seed=3)
    assert torch.equal(torch.cat([b[2] for b in got]), _cat(same, 2))  # our seeded order, not its sampler


# ---------------------------------------------------------------------------------------------------
# bad datasets: one line naming the problem and the fix


class _Items(Dataset):
    def __init__(self, item, n=8):
        self.item, self.n = item, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.item


class _Stream(IterableDataset):
    def __iter__(self):
        return iter([])


def _one_line_error(data, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        ld = as_loader(data, batch_size=4, train=True, **kw)
        next(iter(ld))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


FIX = "make __getitem__ return (image, label)"


@pytest.mark.parametrize("data, says, fix", [
    (_Items((torch.zeros(3, 8, 8), 1, "extra")), "returned a tuple of 3", FIX),
    (_Items({"image": torch.zeros(3, 8, 8), "label": 1}), "returned a dict, not an (image, label) pair", FIX),
    (_Items((torch.zeros(3, 8, 8), 0.5)), "label that is a float", FIX),
    (_Items((torch.zeros(3, 8, 8), torch.tensor([0.0, 1.0]))), "not an int class index", FIX),
    (_Items((Image.new("RGB", (8, 8)), 1)), "not a tensor", "ToTensor()"),
    (_Items((torch.zeros(3, 8, 8, dtype=torch.uint8), 1)), "images that are a torch.uint8 tensor, not float",
     "ToTensor() and Normalize"),
    (_Stream(), "not a map-style dataset", "give a map-style one"),
])
def test_a_dataset_that_does_not_return_image_label_pairs_is_refused(data, says, fix):
    msg = _one_line_error(data)
    assert says in msg and fix in msg


def test_a_collate_fn_that_does_not_make_image_label_batches_is_refused():
    dl = DataLoader(_Items((torch.zeros(3, 8, 8), 1)), collate_fn=lambda s: {"x": s})
    assert "collate_fn" in _one_line_error(dl)


# ---------------------------------------------------------------------------------------------------
# data.builder in configs


def _cfg(colours, epochs=1, **data):
    d = {"builder": BUILDER, "kwargs": {"root": str(colours / "img")}, "batch_size": 30, "eval_batch_size": 64,
         **data}
    return build({"name": "colours", "scale": "ci", "data": d,
                  "model": {"name": "resnet20", "kwargs": {"width": 4, "num_classes": CLASSES}},
                  "optim": {"lr": 0.05},
                  "train": {"epochs": epochs, "device": "cpu", "progress": False, "threads": 1, "deterministic": True}})


@pytest.mark.parametrize("data, key, says", [
    ({"builder": "colours.make"}, "data.builder", "'module.path:function'"),
    ({"builder": "colours:"}, "data.builder", "'module.path:function'"),
    ({"builder": None, "kwargs": {"root": "x"}}, "data.kwargs", "data.builder, which is not set"),
    ({"builder": None, "dataset": "imagenet"}, "data.dataset", "set data.builder"),
    ({"train_per_class": 10}, "data.train_per_class", "subset the data in your builder"),
    ({"augment": False}, "data.augment", "train dataset's own transform"),
])
def test_bad_builder_settings_are_one_line(colours, data, key, says):
    with pytest.raises(ConfigError) as e:
        _cfg(colours, **data)
    assert str(e.value).startswith(key) and says in str(e.value) and "\n" not in str(e.value)


def test_with_a_builder_the_dataset_name_is_a_label(colours):
    assert _cfg(colours, dataset="colours").data.dataset == "colours"


def test_a_builder_that_cannot_be_imported_is_refused_before_the_run_folder(colours, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(colours))
    for spec, says in [("prunelab_no_such_module:make", "importing 'prunelab_no_such_module' failed"),
                       (f"{BUILDER_MODULE}:nope", f"{BUILDER_MODULE} has no 'nope'")]:
        with pytest.raises(ConfigError) as e:
            train(_cfg(colours, builder=spec), tmp_path / "run", quiet=True)
        assert says in str(e.value) and "PYTHONPATH" in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="do not fit data.builder"):
        call_builder(BUILDER, {"root": "x", "colour": "red"})


def test_a_builder_returning_something_else_is_refused(tmp_path, monkeypatch):
    (tmp_path / "prunelab_test_badbuilder.py").write_text("def make():\n    return [1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="must return \\(train, test\\) datasets"):
        call_builder("prunelab_test_badbuilder:make")


def test_holdout_splits_the_training_set_by_index(colours, train_ds):
    d = DataConfig(builder=BUILDER, holdout=30, holdout_seed=None, batch_size=30)
    test = datasets.ImageFolder(colours / "img" / "test", T.ToTensor())
    tl, ev = loaders_from_datasets(train_ds, test, d, "cpu")
    held = _cat(ev["val"], 2)
    trained = set(_cat(tl, 2).tolist())
    assert len(held) == 30 and not trained & set(held.tolist()) and len(trained) == 270
    # ImageFolder lists class by class: its targets keep "the last 30" class-balanced
    assert np.bincount(np.array(train_ds.targets)[held.numpy()]).tolist() == [10, 10, 10]
    with pytest.raises(ConfigError, match="also returned a val dataset"):
        loaders_from_datasets(train_ds, test, d, "cpu", val_data=test)


def test_training_through_a_builder_learns_and_records_it(colours, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(colours))
    res = train(_cfg(colours, epochs=3, holdout=30), tmp_path / "run", quiet=True)
    assert res["data_source"] == BUILDER
    assert res["final"]["test_acc"] > 0.9  # 3 colour classes: chance is 1/3
    assert "val_acc" in res["final"]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["data_source"] == BUILDER


class _Run:
    """The part of a RunDir that check_resume_config reads."""

    def __init__(self, folder):
        self.path, self.resumed = folder, True

    def file(self, name):
        return self.path / name


def test_runs_written_before_data_builder_existed_still_resume(colours, tmp_path):
    import yaml

    from prunelab.config import dump_yaml
    from prunelab.errors import RunDirError

    cfg = load_config("resnet20", "ci")
    old = yaml.safe_load(dump_yaml(cfg))
    # a config.yaml written before these keys existed (to_dict leaves them out at their default as well)
    old["data"].pop("builder", None), old["data"].pop("kwargs", None)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_resume_config(_Run(tmp_path), cfg)  # the new keys at their defaults change nothing
    changed = load_config("resnet20", "ci", ["data.builder=mod:make", "data.train_per_class=null",
                                             "data.test_per_class=null"])
    with pytest.raises(RunDirError, match="data.builder"):
        check_resume_config(_Run(tmp_path), changed)


# ---------------------------------------------------------------------------------------------------
# the command line, end to end: train, die mid-epoch, resume exactly


def _cli(args, colours, env=None):
    path = os.pathsep.join([str(colours), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}
    return subprocess.run([PY, "-m", "prunelab.cli", *args], capture_output=True, text=True, env=e, timeout=300)


def test_cli_trains_on_builder_data_and_resumes_exactly(colours, tmp_path):
    from prunelab.train.trainer import weights_fingerprint

    cfg = tmp_path / "colours.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: colours
        base_scale: ci
        model: {{name: resnet20, kwargs: {{width: 4, num_classes: {CLASSES}}}}}
        data:
          dataset: colour-squares
          builder: "{BUILDER}"
          kwargs: {{root: "{colours / 'img'}"}}
          batch_size: 30
          eval_batch_size: 64
        optim: {{lr: 0.05}}
        train: {{epochs: 2, deterministic: true, checkpoint_every_steps: 4, progress: false, device: cpu, threads: 1}}
    """))
    common = ["train", str(cfg), "--scale", "ci"]
    straight = _cli(common + ["--out", str(tmp_path / "straight")], colours)
    assert straight.returncode == 0, straight.stderr
    assert "test accuracy" in straight.stdout
    killed = _cli(common + ["--out", str(tmp_path / "killed")], colours, env={"PRUNELAB_TEST_SIGKILL_AT_STEP": "14"})
    assert killed.returncode == -9  # step 14 of 20: epoch 2, two steps after its mid-epoch checkpoint
    resumed = _cli(common + ["--out", str(tmp_path / "killed"), "--resume"], colours)
    assert resumed.returncode == 0, resumed.stderr
    res = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert res["data_source"] == BUILDER and res["epochs"] == 2
    assert weights_fingerprint(tmp_path / "straight") == weights_fingerprint(tmp_path / "killed")
    bad = _cli(common + ["--out", str(tmp_path / "bad"), "--set", "data.builder=prunelab_no_such_module:make"],
               colours)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "prunelab_no_such_module" in bad.stderr
