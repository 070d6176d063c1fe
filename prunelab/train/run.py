"""Config -> data -> model -> trainer -> run directory: the path of one dense training run."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import models
from ..config import Config, DataConfig, dump_yaml
from ..counting import count
from ..data.cifar import holdout_split, load_cifar10, subset_per_class
from ..data.loader import CifarLoader
from ..errors import ConfigError, RunDirError
from ..utils import seed_everything, write_json
from .distributed import DistInfo, device_for, init_from_env
from .rundir import RunDir, summed_epoch_time
from .trainer import Trainer, load_weights, weights_payload

# keys that may differ between a run and its resumption (they do not change results; model.imports says
# where the code is, which may move)
RESUME_IGNORED = {("train", "progress"), ("train", "tensorboard"), ("train", "device"), ("train", "threads"),
                  ("model", "imports")}


def build_loaders(data: DataConfig, device, *, seed: int = 0, channels_last: bool = True,
                  dist_info: DistInfo = DistInfo()):
    """Train loader and ``{"test": ..., ["val": ...]}`` eval loaders for a data config: CIFAR-10 held on the
    device (the fast default), or ``data.builder``'s datasets through :mod:`prunelab.data.adapters`."""
    if data.builder:
        from ..data.adapters import call_builder, loaders_from_datasets

        ds = call_builder(data.builder, data.kwargs)
        return loaders_from_datasets(ds["train"], ds["test"], data, device, val_data=ds.get("val"), seed=seed,
                                     channels_last=channels_last, rank=dist_info.rank,
                                     world_size=dist_info.world_size)
    ds = load_cifar10(data.root)
    tx, ty = ds.train_images, ds.train_labels
    train_idx = np.arange(len(ty))
    if data.train_per_class:
        train_idx = subset_per_class(ty, data.train_per_class, seed=data.subset_seed, key="data.train_per_class")
    val_idx = None
    if data.holdout:
        keep, held = holdout_split(len(train_idx), data.holdout, seed=data.holdout_seed, labels=ty[train_idx])
        train_idx, val_idx = (train_idx[held], train_idx[keep]) if data.train_on_holdout else (train_idx[keep], train_idx[held])
    ws = dist_info.world_size
    if data.batch_size % ws:
        raise ConfigError(f"data.batch_size ({data.batch_size}) must be divisible by the number of processes ({ws})")
    if len(train_idx) < data.batch_size:
        raise ConfigError(f"data.batch_size ({data.batch_size}) exceeds the {len(train_idx)} training images; "
                          f"lower it or use more data")
    common = dict(device=device, channels_last=channels_last, rank=dist_info.rank, world_size=ws)
    train = CifarLoader(tx[train_idx], ty[train_idx], train_idx, batch_size=data.batch_size // ws, train=True,
                        augment=data.augment, seed=seed, **common)
    test_idx = np.arange(len(ds.test_labels))
    if data.test_per_class:
        test_idx = subset_per_class(ds.test_labels, data.test_per_class, seed=data.subset_seed,
                                    key="data.test_per_class")
    evals = {"test": CifarLoader(ds.test_images[test_idx], ds.test_labels[test_idx], test_idx,
                                 batch_size=data.eval_batch_size, train=False, **common)}
    if val_idx is not None and data.val_per_class:
        if np.bincount(ty[val_idx], minlength=10).min() < data.val_per_class:
            raise ConfigError(f"data.val_per_class ({data.val_per_class}) exceeds the held-out images of some class; "
                              f"lower it")
        val_idx = val_idx[subset_per_class(ty[val_idx], data.val_per_class, seed=data.subset_seed,
                                           key="data.val_per_class")]
    if val_idx is not None:
        evals["val"] = CifarLoader(tx[val_idx], ty[val_idx], val_idx, batch_size=data.eval_batch_size,
                                   train=False, **common)
    return train, evals


def default_out(cfg: Config) -> Path:
    """``runs/<name>-<scale>``; a name that is not one plain folder name (``../x``, ``a/b``) is refused,
    since it would put the run outside ``runs/``."""
    name = f"{cfg.name}-{cfg.scale}"
    seps = [s for s in (os.sep, os.altsep, "\0") if s]
    if any(s in cfg.name for s in seps):
        raise ConfigError(f"name {cfg.name!r} names the run folder runs/<name>-<scale> and must be one plain folder "
                          f"name (no '/'); rename it, or give the folder with --out")
    return Path("runs") / name


def check_resume_config(run: RunDir, cfg: Config) -> None:
    """Refuse to resume a run with a config that changes results."""
    p = run.file("config.yaml")
    if not run.resumed or not p.exists():
        return
    from ..config import safe_load_yaml

    try:
        old = safe_load_yaml(p.read_bytes().decode("utf-8"), str(p)) or {}
    except (UnicodeDecodeError, ConfigError):
        old = None
    if not isinstance(old, dict):
        raise RunDirError(f"cannot resume {run.path}: its config.yaml is damaged; restore it, or start over with "
                          f"--force / another --out")
    new = yaml.safe_load(dump_yaml(cfg))
    defaults = yaml.safe_load(dump_yaml(Config()))
    diffs = []
    missing = object()

    def walk(a, b, default, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, missing), b.get(k), default.get(k) if isinstance(default, dict) else None, path + (k,))
        elif a is missing and b == default:
            pass  # a key added to the config since the run was written, at its default: nothing changes
        elif (None if a is missing else a) != b and path[:2] not in RESUME_IGNORED:
            diffs.append(".".join(path))

    walk(old, new, defaults, ())
    if diffs:
        raise RunDirError(f"cannot resume {run.path}: the config differs in {', '.join(diffs[:6])}; resume with "
                          f"the original config, or use --force / another --out for a new run")


def check_weights(path, cfg: Config, key: str) -> None:
    """Load ``path`` into a new model of ``cfg`` as the run will (``weights_only=True``, matched against
    the model's name, arguments and tensors), before anything is written: one line naming ``key``.

    A file torch refuses to load as plain tensors is reported as such, never with torch's advice to
    load it with ``weights_only=False`` (that would run whatever code the file holds)."""
    import pickle
    import warnings

    from ..errors import CheckpointError

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{key} {p} does not exist; train that checkpoint first (a bundled config's comment "
                              f"says how) or point at another")
    if p.is_dir() and not (p / "model.pt").is_file():
        raise CheckpointError(f"{key} {p} is a folder without model.pt (not a finished dense run); point at a run "
                              f"folder holding model.pt, or at a .pt file")
    f = p / "model.pt" if p.is_dir() else p
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing a file
            warnings.simplefilter("ignore")
            torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds on a file that is not a checkpoint)
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):  # a pickled class
            raise CheckpointError(f"{key} {f} holds Python objects, not only tensors (torch refuses it with "
                                  f"weights_only=True, and prunelab loads nothing else); point at a model.pt or "
                                  f"checkpoint.pt written by prunelab") from None
        raise CheckpointError(f"{key} {f} is corrupt or not a torch checkpoint ({type(e).__name__}); point at a "
                              f"model.pt written by prunelab") from None
    try:
        load_weights(models.create(cfg.model.name, **cfg.model.kwargs), f)
    except CheckpointError as e:
        raise CheckpointError(f"{key}: {e}") from None


def check_cache_dir() -> None:
    """``$PRUNELAB_CACHE`` (or the default cache folder) must be a folder or makeable as one."""
    from ..data.cifar import cache_dir
    from ..utils import check_path

    what = "PRUNELAB_CACHE" if os.environ.get("PRUNELAB_CACHE") else "the cache folder"
    check_path(cache_dir(), what, writable=False,
               fix="point PRUNELAB_CACHE at a folder (or unset it to use ~/.cache/prunelab)")


def preflight(cfg: Config, dist_info: DistInfo = DistInfo(), *, weights: bool = True) -> None:
    """Checks that need no data: the device, the batch size against the split's size, the weights to
    start from (loaded and matched against the model unless ``weights`` is False), the cache folder.
    They run before a run directory is made, so bad input leaves nothing on disk."""
    device = device_for(dist_info, cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use --set train.device=cpu")
    if cfg.data.builder:
        _preflight_builder_data(cfg.data, dist_info)
    else:
        _preflight_cifar_data(cfg.data, dist_info)
    models.create(cfg.model.name, **cfg.model.kwargs)  # bad model arguments: one line, nothing written
    check_cache_dir()
    if cfg.train.init_from and weights:
        check_weights(cfg.train.init_from, cfg, "train.init_from")


def _check_divisible(d: DataConfig, dist_info: DistInfo) -> None:
    if d.batch_size % dist_info.world_size:
        raise ConfigError(f"data.batch_size ({d.batch_size}) must be divisible by the number of processes "
                          f"({dist_info.world_size})")


def _preflight_cifar_data(d: DataConfig, dist_info: DistInfo) -> None:
    """CIFAR-10 is there, and the split sizes fit the batch size."""
    from ..data.cifar import _locate

    _locate(d.root)  # the data must be there before a run folder is: one line naming where it looked
    ds = load_cifar10(d.root)  # decoded once (memoised) and checked: a damaged cache fails before a folder exists
    for key, k, labels in (("data.train_per_class", d.train_per_class, ds.train_labels),
                           ("data.test_per_class", d.test_per_class, ds.test_labels)):
        if k:
            subset_per_class(labels, k, key=key)
    n = 10 * d.train_per_class if d.train_per_class else 50000
    if d.holdout:
        held = int(round(d.holdout * n)) if d.holdout < 1 else int(d.holdout)
        if not 0 < held < n:
            raise ConfigError(f"data.holdout ({d.holdout}) must leave between 1 and {n - 1} of the {n} training "
                              f"images; lower it")
        n_val = n - held if d.train_on_holdout else held
        if d.val_per_class and 10 * d.val_per_class > n_val:
            raise ConfigError(f"data.val_per_class ({d.val_per_class}) asks for more than the {n_val} held-out images; "
                              f"lower it")
        n = held if d.train_on_holdout else n - held
    _check_divisible(d, dist_info)
    if n < d.batch_size:
        raise ConfigError(f"data.batch_size ({d.batch_size}) exceeds the {n} training images; lower it or use more data")


def _preflight_builder_data(d: DataConfig, dist_info: DistInfo) -> None:
    """``data.builder`` can be imported. It is not called here: it may load a whole dataset, and
    build_loaders checks the split sizes when it has the datasets."""
    from ..data.adapters import resolve_builder

    resolve_builder(d.builder)
    _check_divisible(d, dist_info)


def data_source(data: DataConfig) -> str:
    """What the run trained on, for result.json: the builder, or which CIFAR-10 files."""
    return data.builder if data.builder else load_cifar10(data.root).source


def setup_runtime(cfg: Config, dist_info: DistInfo) -> torch.device:
    device = device_for(dist_info, cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use --set train.device=cpu")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.train.seed)
    return device


def build_model(cfg: Config) -> torch.nn.Module:
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    if cfg.train.init_from:
        load_weights(model, cfg.train.init_from)
    return model


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def train(cfg: Config, out=None, *, resume: bool = False, force: bool = False, quiet: bool = False) -> dict:
    """Train ``cfg.model`` densely as configured; returns the run's result record.

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt``, ``model.pt`` and ``result.json``
    into ``out`` (default ``runs/<name>-<scale>``).
    """
    dist_info = init_from_env()
    preflight(cfg, dist_info)
    out = Path(out) if out else default_out(cfg)
    run = RunDir(out, resume=resume, force=force, rank=dist_info.rank, quiet=quiet)
    try:
        check_resume_config(run, cfg)
        run.write_text("config.yaml", dump_yaml(cfg))
        device = setup_runtime(cfg, dist_info)
        model = build_model(cfg)
        train_loader, evals = build_loaders(cfg.data, device, seed=cfg.train.seed,
                                            channels_last=cfg.train.channels_last, dist_info=dist_info)
        trainer = Trainer(model, train_loader, evals, train_cfg=cfg.train, optim_cfg=cfg.optim,
                          schedule_cfg=cfg.schedule, run=run, device=device, rank=dist_info.rank,
                          world_size=dist_info.world_size)
        t0 = time.time()
        final = trainer.fit(resume=run.resumed)
        cost = count(model)
        result = {"name": cfg.name, "scale": cfg.scale, "model": cfg.model.name, "model_kwargs": cfg.model.kwargs,
                  "epochs": trainer.epoch, "final": final, "macs": cost.macs, "params": cost.params,
                  "cost_convention": cost.convention, "wall_time_s": time.time() - t0,
                  # wall_time_s covers this process only; train_time_s sums every epoch of the run
                  "train_time_s": summed_epoch_time(run.read_metrics()), "resumed": bool(run.resumed),
                  "environment": environment(), "data_source": data_source(cfg.data)}
        if dist_info.is_main:
            run.save("model.pt", weights_payload(model, {"final": final, "scale": cfg.scale}))
            write_json(run.file("result.json"), result)
        return result
    finally:
        run.close()
