"""Experiment configuration: typed sections, YAML files, scales and ``--set`` overrides.

A config file is YAML with the sections below. It may carry a ``scales:`` block whose ``ci``, ``cpu``
and ``paper`` entries override the rest at that scale::

    name: resnet20-dense
    model: {name: resnet20}
    train: {epochs: 15}
    scales:
      ci: {data: {train_per_class: 20, test_per_class: 10}, train: {epochs: 1}}
      paper: {train: {epochs: 164}}

Resolution order: defaults < file < ``scales[scale]`` < ``--set key=value`` overrides. Unknown keys
and out-of-range values raise :class:`~prunelab.errors.ConfigError` naming the key and the fix.
Switching the method with ``--set method.name=X`` starts ``X`` from its own defaults (the file's method
options are dropped, since they belong to another method).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import ConfigError, UnknownNameError, suggest

SCALES = ("ci", "cpu", "paper")
# said after every ci-scale summary line: a ci run checks that everything runs, nothing more
CI_CAVEAT = "ci scale is a smoke run on tiny data: its accuracy means nothing (use --scale cpu for real numbers)"


def scale_caveat(scale: str) -> str:
    """The sentence a summary line ends with at ``scale`` ('' but at ci)."""
    return f" [{CI_CAVEAT}]" if scale == "ci" else ""
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    """Dataset and batching."""

    dataset: str = "cifar10"
    root: str | None = None  # folder with cifar-10-batches-py/ or the JPEG archive; default: search
    train_per_class: int | None = None  # seeded subset of k images per class (ci scale)
    test_per_class: int | None = None
    subset_seed: int = 0
    holdout: float = 0  # held out of the training set: a count, or a fraction when < 1
    holdout_seed: int | None = 0  # None: hold out the last samples (PFS's 45k/5k)
    train_on_holdout: bool = False  # train on the held-out part instead (DDNP's search split)
    val_per_class: int | None = None  # evaluate on a seeded per-class subset of the held-out part only
    augment: bool = True
    batch_size: int = 128
    eval_batch_size: int = 1000
    # your own data instead of CIFAR-10: "module.path:function", called with ``kwargs``; it returns
    # (train, test) datasets or DataLoaders, or {"train", "test"[, "val"]} (see prunelab.data.adapters)
    builder: str | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The network: a registered model (``name``, :func:`prunelab.models.list_models`) or one of your own."""

    name: str = "resnet20"
    kwargs: dict = field(default_factory=dict)
    # your own model: "module.path:function", called with ``kwargs``, returning an nn.Module that is described
    # by tracing at ``input_shape`` ([C, H, W], default [3, 32, 32]); the model is named by the path
    builder: str | None = None
    input_shape: list | None = None
    # modules or .py files imported before the model and method are made (``--import`` adds to a run's
    # config.yaml, so that a fresh process reloads the run without it)
    imports: list = field(default_factory=list)


@dataclass
class OptimConfig:
    """Optimiser of the network weights."""

    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: tuple = (0.9, 0.999)
    decay_norm_and_bias: bool = False  # apply weight decay to BN/bias parameters too


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, applied per step. ``warmup`` is a fraction of all steps (< 1) or a
    number of epochs (>= 1), ramping linearly from ``warmup_start`` x lr."""

    name: str = "onecycle"  # constant | cosine | multistep | step | onecycle
    warmup: float = 0.15
    warmup_start: float = 0.0
    milestones: list = field(default_factory=list)  # epochs (multistep)
    step_size: int = 30  # epochs (step)
    gamma: float = 0.1
    final_factor: float = 0.0  # lr at the end of cosine/onecycle, as a fraction of the peak


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 15
    label_smoothing: float = 0.1
    grad_clip: float | None = None  # max gradient norm
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | off | bf16 | fp16
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 1  # epochs
    checkpoint_every_steps: int = 0  # extra mid-epoch checkpoints (0: end of epoch only)
    keep_epochs: list = field(default_factory=list)  # also keep a weights snapshot after these epochs (0 = init)
    max_steps: int | None = None  # stop early (tests, benchmarks)
    init_from: str | None = None  # weights to start from: a run dir or a .pt file
    tensorboard: bool = False
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    compile: bool = False  # torch.compile the model (CUDA)


@dataclass
class Config:
    """A whole experiment. ``method``, ``budget`` and ``stages`` are read by the pruning pipeline."""

    name: str = "run"
    scale: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict:
        """The config as plain data; keys added after results were committed are left out while at their
        default (:data:`OMIT_AT_DEFAULT`), so every fingerprint hashed from this dict stays as it was."""
        d = dataclasses.asdict(self)
        for (sec, key), default in OMIT_AT_DEFAULT.items():
            if sec in d and key in d[sec] and d[sec][key] == default:
                del d[sec][key]
        return d


# (section, key) -> default: config keys newer than the committed results' fingerprints; left out of
# ``Config.to_dict`` at their default so that studies made before them stay current
OMIT_AT_DEFAULT = {("data", "builder"): None, ("data", "kwargs"): {}, ("model", "builder"): None,
                   ("model", "input_shape"): None, ("model", "imports"): []}


# ---------------------------------------------------------------------------------------------------
# validation


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key} {msg}")


def validate(cfg: Config) -> Config:
    """Range checks; raise ConfigError with the key and a fix."""
    _check(cfg.scale in SCALES, "scale", f"must be one of {SCALES}, got {cfg.scale!r}")
    d, o, s, t = cfg.data, cfg.optim, cfg.schedule, cfg.train
    _check(d.builder is not None or d.dataset == "cifar10", "data.dataset",
           f"must be 'cifar10' (the built-in dataset), got {d.dataset!r}; for other data set data.builder to "
           f"'module.path:function' (with data.builder, data.dataset is only a label)")
    _check_builder(d)
    _check(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    _check(d.eval_batch_size >= 1, "data.eval_batch_size", f"must be >= 1, got {d.eval_batch_size}")
    for k in ("train_per_class", "test_per_class", "val_per_class"):
        v = getattr(d, k)
        _check(v is None or 1 <= v <= 5000, f"data.{k}", f"must be between 1 and 5000 (or null), got {v}")
    _check(d.holdout >= 0, "data.holdout", f"must be >= 0, got {d.holdout}")
    _check_model(cfg.model)
    _check(o.name in ("sgd", "adam", "adamw"), "optim.name", f"must be sgd, adam or adamw, got {o.name!r}")
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr} (try --set optim.lr=0.1)")
    _check(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    names = ("constant", "cosine", "multistep", "step", "onecycle")
    _check(s.name in names, "schedule.name", f"must be one of {names}, got {s.name!r}")
    _check(s.warmup >= 0, "schedule.warmup", f"must be >= 0, got {s.warmup}")
    _check(0 <= s.final_factor <= 1, "schedule.final_factor", f"must be in [0, 1], got {s.final_factor}")
    _check(s.gamma > 0, "schedule.gamma", f"must be > 0, got {s.gamma}")
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", f"must be > 0 or null, got {t.grad_clip}")
    _check(t.amp in ("auto", "off", "bf16", "fp16"), "train.amp", f"must be auto, off, bf16 or fp16, got {t.amp!r}")
    _check(t.eval_every >= 1, "train.eval_every", f"must be >= 1, got {t.eval_every}")
    _check(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", f"must be >= 0, got {t.checkpoint_every_steps}")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", f"must be >= 1 or null, got {t.max_steps}")
    # sizes and seeds: beyond these a run cannot start (or never ends) rather than doing what was meant
    _check(d.batch_size <= 1 << 20, "data.batch_size", f"must be <= {1 << 20}, got {d.batch_size}")
    _check(d.eval_batch_size <= 1 << 20, "data.eval_batch_size", f"must be <= {1 << 20}, got {d.eval_batch_size}")
    _check(d.holdout < 60000, "data.holdout", f"must be a count below the training set's size or a fraction < 1, "
                                              f"got {d.holdout}")
    _check(d.holdout < 1 or d.holdout == int(d.holdout), "data.holdout",
           f"must be a whole count (>= 1) or a fraction (< 1), got {d.holdout}")
    for k in ("subset_seed", "holdout_seed"):
        v = getattr(d, k)
        _check(v is None or 0 <= v < 2**32, f"data.{k}", f"must be in [0, 2**32), got {v}")
    _check(0 <= t.seed < 2**32, "train.seed", f"must be in [0, 2**32), got {t.seed}")
    _check(t.epochs <= 100_000, "train.epochs", f"must be <= 100000, got {t.epochs}")
    _check(t.threads is None or 1 <= t.threads <= 1024, "train.threads", f"must be between 1 and 1024 (or null), "
                                                                          f"got {t.threads}")
    _check(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device)), "train.device",
           f"must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    _check(all(isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= t.epochs for e in t.keep_epochs),
           "train.keep_epochs", f"must list whole epochs between 0 and train.epochs ({t.epochs}), got {t.keep_epochs}")
    _check(len(o.betas) == 2 and all(_is_num(b) and 0 <= b < 1 for b in o.betas), "optim.betas",
           f"must be two numbers in [0, 1), got {list(o.betas)}")
    _check(s.warmup_start >= 0, "schedule.warmup_start", f"must be >= 0, got {s.warmup_start}")
    _check(s.step_size >= 1, "schedule.step_size", f"must be >= 1, got {s.step_size}")
    _check(all(_is_num(m) and m > 0 for m in s.milestones), "schedule.milestones",
           f"must list epochs > 0, got {s.milestones}")
    # only multistep reads them (a paper-scale list may stay behind another scale's schedule)
    _check(s.name != "multistep" or all(m <= t.epochs for m in s.milestones), "schedule.milestones",
           f"must not pass train.epochs ({t.epochs}) with schedule multistep (a later one never applies), "
           f"got {s.milestones}")
    _check(s.warmup < 1 or s.warmup <= t.epochs, "schedule.warmup",
           f"is a number of epochs when >= 1 and must not exceed train.epochs ({t.epochs}), got {s.warmup}")
    # keys that only mean something with a held-out split: without one they would be silently ignored
    _check(d.holdout or not d.train_on_holdout, "data.train_on_holdout",
           "is true but data.holdout is 0, so there is no held-out part to train on; set data.holdout (a count, or "
           "a fraction < 1) or drop train_on_holdout")
    _check(d.holdout or d.val_per_class is None, "data.val_per_class",
           f"({d.val_per_class}) picks from the held-out part, but data.holdout is 0; set data.holdout or drop it "
           f"(--set data.val_per_class=null)")
    return cfg


BUILDER_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _check_model(m: ModelConfig) -> None:
    """The model can be had: ``model.imports`` are imported (recorded as absolute paths), ``model.builder``
    resolves to a function (the model is then named by it), or ``model.name`` is registered (after the
    ``prunelab.plugins`` entry points). The builder is not called here (preflight builds the model)."""
    from .models import registry
    from .plugins import load_recorded

    _check(all(isinstance(i, str) for i in m.imports), "model.imports",
           f"must list module names and .py files, got {m.imports!r}")
    m.imports = load_recorded(m.imports, "model.imports")
    if m.builder is None and ":" in m.name:  # model.name: "module:function" is a builder too
        m.builder = m.name
    if m.builder is None:
        _check(m.input_shape is None, "model.input_shape",
               f"is the input size of a model.builder model, and model {m.name!r} is registered with its own; drop "
               f"model.input_shape or set model.builder")
        try:
            registry.get_entry(m.name)
        except UnknownNameError:
            raise ConfigError(str(registry.unknown_model(m.name, "model.name: "))) from None
        return
    _check(bool(BUILDER_RE.fullmatch(m.builder)), "model.builder",
           f"must be 'module.path:function' (an importable module and the function in it that returns the "
           f"network), got {m.builder!r}")
    _check(m.name in (ModelConfig.name, m.builder), "model.name",
           f"is {m.name!r}, but a model.builder model is named by its builder ({m.builder!r}); drop model.name, or "
           f"register the function with prunelab.models.register_model and give only model.name")
    m.name = m.builder
    shape = m.input_shape if m.input_shape is not None else list(registry.DEFAULT_INPUT_SIZE)
    registry.use_builder(m.builder, registry._input_size(shape, "model.input_shape"))


def _check_builder(d: DataConfig) -> None:
    """``data.builder`` is "module.path:function"; without it, ``data.kwargs`` would be ignored. With it,
    the per-class subsets (CIFAR-10's class-balanced picks) are refused: they would read every label."""
    if d.builder is None:
        _check(not d.kwargs, "data.kwargs", f"are the arguments of data.builder, which is not set; set data.builder "
                                            f"to 'module.path:function' or drop data.kwargs (got {d.kwargs!r})")
        return
    _check(bool(BUILDER_RE.fullmatch(d.builder)), "data.builder",
           f"must be 'module.path:function' (an importable module and the function in it that returns the "
           f"datasets), got {d.builder!r}")
    for k in ("train_per_class", "test_per_class", "val_per_class"):
        _check(getattr(d, k) is None, f"data.{k}", f"picks CIFAR-10 images per class and cannot be used with "
                                                   f"data.builder; subset the data in your builder, or set it to null")
    _check(d.augment, "data.augment", "is false, but with data.builder augmentation is the train dataset's own "
                                      "transform; drop the random transforms there and data.augment here")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------------
# building from dicts


def _coerce(value, typ, key):
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if value is None:
        if typ is type(None) or type(None) in args or typ is typing.Any:
            return None
        raise ConfigError(f"{key} must not be null")
    if origin is typing.Union or (origin is not None and type(None) in args):
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            num = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(num):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if typ is int:
            if num != int(num) or abs(num) > 2**62:
                raise ConfigError(f"{key} must be an integer, got {value!r}")
            return int(num)
        return num
    if typ is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    if typ in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return type(value)(value) if typ is list else tuple(value)
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for k in data:
        if k not in known:
            raise ConfigError(f"unknown config key {prefix}{k}.{suggest(k, known)} "
                              f"Valid keys{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            continue
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, data[name] or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], typ, f"{prefix}{name}")
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items) -> dict:
    """Turn ``["train.lr=0.1", "model.kwargs.width=32"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--set {item!r}: the key is empty or has an empty part; write section.key=value")
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        value = _yaml11_numbers(value)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _yaml11_numbers(value):
    """``value`` with the numbers YAML 1.1 reads as strings ("3e-4", "1e308": no dot) made numbers, at the
    top and inside lists and mappings alike (``--set schedule.milestones=[1e3]``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_yaml11_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml11_numbers(v) for k, v in value.items()}
    return value


def check_set_conflicts(items) -> None:
    """Refuse ``--set`` items that give one key twice (with different values) or a key and a section
    that holds it (``--set train=... --set train.epochs=3``). The Python API composes lists of sets
    where the last one wins; on the command line a repeated key is a mistake."""
    given: dict = {}
    for item in items or ():
        if "=" not in item:
            continue  # parse_set reports it
        key, raw = item.split("=", 1)
        key = key.strip()
        for other, value in given.items():
            if other == key or other.startswith(key + ".") or key.startswith(other + "."):
                if other == key and value == raw:
                    continue
                raise ConfigError(f"--set {other}={value} and --set {key}={raw} conflict; give each setting once")
        given[key] = raw


def find_config(ref: str | os.PathLike) -> Path:
    """A config path, or the name of a bundled config (``prunelab/configs/<name>.yaml``)."""
    p = Path(ref)
    try:
        if p.is_file():
            return p
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise ConfigError(f"config {str(ref)[:60]!r}... cannot be a file ({getattr(e, 'strerror', None) or e}); "
                          f"give a config file or a bundled config's name") from None
    bundled = CONFIG_DIR / f"{ref}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(ref)!r} is neither a file nor a bundled config.{suggest(str(ref), names)} "
                      f"Bundled: {', '.join(names)}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (YAML would keep the last)."""


def _unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: the base constructor reports it
            break
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load_yaml(text_or_file, where: str = "config"):
    """Parse YAML safely (no Python tags), refusing duplicate keys; one-line :class:`ConfigError`."""
    try:
        return yaml.load(text_or_file, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise ConfigError(f"{where} is not valid YAML ({first[:200]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a text file (it does not decode as UTF-8)") from None


def load_raw(ref) -> dict:
    path = find_config(ref)
    try:
        with open(path, "rb") as f:
            data = safe_load_yaml(f.read().decode("utf-8"), str(path)) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (it does not decode as UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{path} could not be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return data


def resolve_dict(raw: dict, scale: str | None = None, overrides: dict | None = None, *,
                 default_scale: str | None = None) -> dict:
    """Apply the scale block and overrides to a raw config dict (no validation).

    The scale: ``scale`` (``--scale``), else an override's ``scale`` (``--set scale=X``), else the
    file's ``scale:``, else ``default_scale`` (the command line's ``$PRUNELAB_SCALE`` or cpu), else the
    file's ``base_scale``."""
    raw = copy.deepcopy(raw)
    scales = raw.pop("scales", {}) or {}
    base = raw.pop("base_scale", "cpu")  # the scale the file's top-level settings are written for
    asked = (overrides or {}).get("scale")
    for where, value in (("--set scale", asked), ("the config's scale:", raw.get("scale"))):
        if value is not None and value not in SCALES:
            raise ConfigError(f"{where} must be one of {', '.join(SCALES)}, got {value!r}; choose the scale with "
                              f"--scale")
    if asked is not None and scale is not None and asked != scale:
        raise ConfigError(f"--set scale={asked} conflicts with --scale {scale}; choose the scale with --scale")
    scale = scale or asked or raw.get("scale") or default_scale or base
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {SCALES}, got {scale!r}")
    if not isinstance(scales, dict):
        raise ConfigError(f"scales must be a mapping of scale blocks ({', '.join(SCALES)}), got {scales!r}")
    unknown = set(scales) - set(SCALES)
    if unknown:
        raise ConfigError(f"scales block has unknown scale(s) {sorted(unknown)}; valid: {SCALES}")
    if base not in SCALES:
        raise ConfigError(f"base_scale must be one of {SCALES}, got {base!r}")
    if scale != base and not scales:  # a file without scale blocks: its one setting serves every scale
        import sys

        print(f"prunelab: warning: this config has no scale blocks; its {base}-scale settings run under the "
              f"{scale!r} label (add scales.{scale}, or base_scale: {scale} if that is what it is)", file=sys.stderr)
    elif scale != base and scale not in scales:
        has = ", ".join(sorted(scales))
        raise ConfigError(f"this config has no {scale!r} block (scale blocks: {has}; its top level is the "
                          f"{base!r} scale), so --scale {scale} would run {base}-scale settings under the {scale} "
                          f"label; add scales.{scale} to the file or pick one of: {base}, {has}")
    merged = deep_merge(raw, scales.get(scale, {}))
    new_method = ((overrides or {}).get("method") or {}).get("name")
    if new_method and new_method != (merged.get("method") or {}).get("name"):
        # switching methods with --set method.name=X starts X from its own defaults: the file's
        # options belong to the other method and would be rejected as unknown
        merged["method"] = {}
    merged = deep_merge(merged, overrides or {})
    merged["scale"] = scale
    return merged


def build(data: dict) -> Config:
    return validate(from_dict(Config, data))


def load_config(ref, scale: str | None = None, sets=None, overrides: dict | None = None, *,
                default_scale: str | None = None) -> Config:
    """Load a config file (or bundled name), apply its scale block and overrides, validate.

    ``sets`` are ``--set key=value`` strings (values parsed as YAML); ``overrides`` is a nested mapping
    of typed values (``{"train": {"epochs": 3}, "method": {"lambda": 1e-4}}``), applied after ``sets``.
    Code that composes configs (studies, workflows) uses ``overrides``, never formatted strings.
    ``default_scale``: the scale when neither ``scale``, ``--set scale`` nor the file names one.
    """
    over = deep_merge(parse_set(sets), overrides or {})
    return build(resolve_dict(load_raw(ref), scale, over, default_scale=default_scale))


def default_scale() -> str:
    """``$PRUNELAB_SCALE`` if set, else ``cpu``."""
    s = os.environ.get("PRUNELAB_SCALE", "cpu")
    if s not in SCALES:
        raise ConfigError(f"PRUNELAB_SCALE must be one of {SCALES}, got {s!r}")
    return s


def dump_yaml(cfg: Config | dict) -> str:
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return yaml.safe_dump(_plain(d), sort_keys=False)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
