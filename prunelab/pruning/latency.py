"""Latency tables: the measured inference time of each prunable group's layers over a grid of widths,
for the device at hand, and the prediction of a structure's latency from them.

A *group* is one gated tensor whose channels only its own block reads (a CIFAR ResNet's block middle:
conv1 -> BN -> ReLU writes it, conv2 reads it). Its layers are timed as a small module at every width
of a grid (every width up to 64 channels, every 4th up to 256, every 8th beyond), on an input of the
shape the full network gives them; groups with the same shapes (same input and output channels,
spatial size and stride) share one measurement. The whole dense network is timed too, and

    latency(structure) = (full - sum_g t_g(C_g)) + sum_g t_g(w_g),

with t_g a robust (Theil-Sen) line through the measured widths, the raw points kept in the file (the
first term is what pruning the groups does not touch: the stem, the residual trunk, the classifier,
Python overhead). ``LatencyTable.group_seconds`` says why a line and not the points.

Timing protocol: eval mode, no autograd; ``channels_last`` on CPU for batch > 1; warm-up calls; each
measurement is a block of calls lasting about ``block_ms``; ``repeats`` rounds visit all widths in
turn (interleaved, so a slow moment of the machine hits every width alike) and the minimum per-call
time over the rounds is kept. A table is keyed by model, model arguments, groups, device description,
torch version, batch, threads and memory format, and cached as JSON under
``<cache>/latency/`` (:func:`prunelab.data.cifar.cache_dir`); a second request with the same key
reads the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.registry import create, describe
from ..models.spec import ModelSpec
from .compact import slice_bn, slice_conv

TABLE_FORMAT = "prunelab-latency-table-1"


def device_description(device: torch.device) -> str:
    """What the table is valid for: the GPU's name, or the CPU's model name (from /proc/cpuinfo)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name}"


def width_grid(channels: int) -> list[int]:
    """Widths measured for a group of ``channels``: all up to 64, every 4th to 256, every 8th beyond
    (always including the full width)."""
    g = list(range(1, min(channels, 64) + 1))
    g += list(range(68, min(channels, 256) + 1, 4)) + list(range(264, channels + 1, 8))
    if g[-1] != channels:
        g.append(channels)
    return g


def groups(spec: ModelSpec, names=None) -> dict[str, dict]:
    """The latency groups of ``spec``: ``{tensor: {"writer": op, "readers": [ops], "signature": ...}}``.

    ``names``: the gated tensors to group (default: the model's ``internal`` slot set). A tensor read
    together with others (a residual trunk) cannot be timed alone and is refused with one line."""
    if names is None:
        names = [t.name for t in spec.select(spec.default_slots("internal"))]
    out = {}
    for n in names:
        writer = [op for op in spec.ops if op.writes == n]
        readers = [op for op in spec.ops if n in op.reads]
        if len(writer) != 1 or any(op.reads != (n,) or op.kind != "conv" for op in readers) or not readers:
            raise ConfigError(f"latency budgets time block-internal channels alone; {n} is read together with other "
                              f"tensors (a residual trunk): use the model's internal slots (e.g. method.slots: [mid])")
        w, rs = writer[0], readers
        sig = (w.in_channels, spec.tensor(n).channels, tuple(w.in_hw), tuple(w.kernel),
               tuple((r.out_channels, tuple(r.out_hw), tuple(r.kernel)) for r in rs))
        out[n] = {"writer": w.name, "readers": [r.name for r in rs], "signature": repr(sig),
                  "bn": w.bn, "reader_bns": [r.bn for r in rs], "in_hw": tuple(w.in_hw), "in_channels": w.in_channels}
    return out


class _Group(nn.Module):
    """A group's layers at one width: conv -> BN -> ReLU, then every reader conv (-> its BN)."""

    def __init__(self, net: nn.Module, g: dict, width: int):
        super().__init__()
        idx = torch.arange(width)
        self.conv = slice_conv(net.get_submodule(g["writer"]), out_idx=idx)
        self.bn = slice_bn(net.get_submodule(g["bn"]), idx) if g["bn"] else nn.Identity()
        self.readers = nn.ModuleList(slice_conv(net.get_submodule(r), in_idx=idx) for r in g["readers"])
        self.reader_bns = nn.ModuleList(copy.deepcopy(net.get_submodule(b)) if b else nn.Identity()
                                        for b in g["reader_bns"])

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return [bn(r(h)) for r, bn in zip(self.readers, self.reader_bns)]


def _per_call(fn, x, block_ms: float, sync) -> float:
    """Seconds per call of ``fn(x)`` over a block of calls lasting about ``block_ms``."""
    n, t = 1, 0.0
    while True:  # size the block from a short probe
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn(x)
        sync()
        t = time.perf_counter() - t0
        if t * 1e3 >= block_ms / 4 or n >= 1 << 16:
            break
        n *= 4
    reps = max(1, int(math.ceil(n * block_ms / max(t * 1e3, 1e-6))))
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    sync()
    return (time.perf_counter() - t0) / reps


def theil_sen(x, y) -> tuple[float, float]:
    """``(intercept, slope)`` of the Theil-Sen line: slope = median of the pairwise slopes, intercept =
    median of y - slope x (robust to up to ~29 % of outlying points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2:
        return (float(y[0]) if y.size else 0.0), 0.0
    i, j = np.triu_indices(x.size, 1)
    dx = x[j] - x[i]
    ok = dx != 0
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok])) if ok.any() else 0.0
    return float(np.median(y - slope * x)), slope


@dataclass
class LatencyTable:
    """Measured seconds per inference call of each group over widths, and of the whole dense network."""

    key: dict
    groups: dict  # tensor -> {"signature", "widths": [...], "seconds": [...]}
    full_seconds: float
    meta: dict = field(default_factory=dict)
    fit: str = "line"  # "line": a robust line per group (default); "points": the measurements interpolated
    _fits: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def base_seconds(self) -> float:
        """The part of the dense network's time the groups do not account for."""
        return self.full_seconds - sum(self.group_seconds(n, g["widths"][-1]) for n, g in self.groups.items())

    def group_seconds(self, name: str, width, raw: bool = False) -> float:
        """Predicted seconds per call of group ``name`` at ``width``: a Theil-Sen line through its measured
        widths (``raw=True`` or a table made with ``fit="points"``: the measurements, linearly
        interpolated).

        Why a robust line and not the points: on a shared machine one slow block inflates a single width
        (measured here: ResNet-56 at batch 128, 17.4 ms at the full 16 channels of layer1 against 9.7 ms
        at 15, counted for all nine identical blocks), and the solver then "saves" half the latency by
        dropping one channel. A conv group's time is close to affine in its width, and the median of
        pairwise slopes ignores a minority of outliers; width-specific kernel effects smaller than the
        machine's noise are given up (``round_to: auto`` then seldom finds a multiple worth keeping)."""
        g = self.groups[name]
        if raw or self.fit == "points":
            return float(np.interp(width, g["widths"], g["seconds"]))
        fit = self._fits.get(name)
        if fit is None:
            fit = self._fits[name] = theil_sen(g["widths"], g["seconds"])
        return max(0.0, fit[0] + fit[1] * float(width))

    def predict(self, widths: dict) -> float:
        """Seconds per call of the network whose groups keep ``widths`` (missing: full width)."""
        return self.base_seconds + sum(self.group_seconds(n, widths.get(n, g["widths"][-1]))
                                       for n, g in self.groups.items())

    def predict_structure(self, structure) -> float:
        alive = getattr(structure, "alive", structure) or {}
        return self.predict({n: len(a) for n, a in alive.items() if n in self.groups})

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "key": self.key, "groups": self.groups, "full_seconds": self.full_seconds,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        """A table from its JSON form; anything of another shape (a damaged or foreign cache file) is a
        :class:`ConfigError` saying what is wrong, never a table with unusable numbers."""
        why = _table_problem(d)
        if why:
            raise ConfigError(f"not a prunelab latency table ({why})")
        return cls(d["key"], d["groups"], float(d["full_seconds"]), d.get("meta") or {})


def _is_time(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _table_problem(d) -> str | None:
    """What makes ``d`` not a latency table's JSON form, or None."""
    if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
        return f"format {d.get('format') if isinstance(d, dict) else type(d).__name__!r}"
    if not isinstance(d.get("key"), dict) or not isinstance(d.get("groups"), dict) or not d["groups"]:
        return "no key or no groups"
    if not (_is_time(d.get("full_seconds")) and d["full_seconds"] > 0):
        return f"full_seconds {d.get('full_seconds')!r} is not a positive time"
    if not isinstance(d.get("meta", {}), dict):
        return "meta is not a mapping"
    for name, g in d["groups"].items():
        w, t = (g.get("widths"), g.get("seconds")) if isinstance(g, dict) else (None, None)
        if not (isinstance(w, list) and isinstance(t, list) and w and len(w) == len(t)):
            return f"group {name} has no widths and seconds of one length"
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in w) or w != sorted(set(w)):
            return f"group {name}'s widths are not increasing whole numbers"
        if not all(_is_time(x) for x in t):
            return f"group {name} has a time that is negative or not a number"
    return None


def table_key(model: str, model_kwargs: dict, names, batch: int, device: torch.device, threads: int | None) -> dict:
    return {"model": model, "model_kwargs": dict(model_kwargs or {}), "groups": list(names), "batch": int(batch),
            "device": device_description(device), "torch": torch.__version__,
            "threads": int(threads or torch.get_num_threads()) if device.type == "cpu" else None,
            "channels_last": device.type == "cpu" and batch > 1 or device.type == "cuda"}


def table_path(key: dict) -> Path:
    from ..data.cifar import cache_dir

    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "latency" / f"{key['model']}-b{key['batch']}-{digest}.json"


def measure_table(model: str, model_kwargs=None, *, names=None, batch: int = 1, device="cpu",
                  threads: int | None = None, repeats: int = 5, block_ms: float = 20.0, grid=width_grid,
                  progress: bool = True) -> LatencyTable:
    """Measure a latency table (see the module docstring); ``grid(channels) -> widths``."""
    device = torch.device(device)
    if threads:
        torch.set_num_threads(int(threads))
    net = create(model, **(model_kwargs or {})).eval()
    spec = describe(net)
    gs = groups(spec, names)
    key = table_key(model, model_kwargs, list(gs), batch, device, threads)
    cl = key["channels_last"]
    fmt = torch.channels_last if cl else torch.contiguous_format
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    t_start = time.perf_counter()
    by_sig: dict[str, list[str]] = {}
    for n, g in gs.items():
        by_sig.setdefault(g["signature"], []).append(n)
    cases = []  # (signature, width, module, input)
    for sig, members in by_sig.items():
        g = gs[members[0]]
        x = torch.randn(batch, g["in_channels"], *g["in_hw"], device=device).contiguous(memory_format=fmt)
        for w in grid(spec.tensor(members[0]).channels):
            m = _Group(net, g, w).to(device, memory_format=fmt).eval()
            cases.append((sig, w, m, x))
    full_x = torch.randn(batch, *spec.input_size, device=device).contiguous(memory_format=fmt)
    full = net.to(device, memory_format=fmt)
    best: dict = {}
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for _, _, m, x in cases[:: max(1, len(cases) // 8)]:  # warm-up
            m(x)
        full(full_x)
        bar = tqdm(total=repeats * (len(cases) + 1), desc=f"latency table {model} b{batch}", disable=None if progress else True,
                   leave=False)
        for _ in range(repeats):  # interleaved: every round visits every width
            for sig, w, m, x in cases:
                s = _per_call(m, x, block_ms, sync)
                best[(sig, w)] = min(best.get((sig, w), math.inf), s)
                bar.update(1)
            s = _per_call(full, full_x, block_ms, sync)
            best["full"] = min(best.get("full", math.inf), s)
            bar.update(1)
        bar.close()
    table_groups = {}
    for n, g in gs.items():
        widths = grid(spec.tensor(n).channels)
        table_groups[n] = {"signature": g["signature"], "widths": widths,
                           "seconds": [best[(g["signature"], w)] for w in widths]}
    meta = {"measured": time.strftime("%Y-%m-%d %H:%M"), "seconds_to_measure": time.perf_counter() - t_start,
            "repeats": repeats, "block_ms": block_ms, "signatures": len(by_sig), "points": len(cases)}
    return LatencyTable(key, table_groups, best["full"], meta)


def _cached(path: Path, key: dict) -> LatencyTable | None:
    """The table cached at ``path`` for ``key``; None when there is none. A damaged file, or one of
    another shape or key, is reported in one line and measured again."""
    import sys

    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        why = _table_problem(data)
    except (OSError, ValueError) as e:  # JSON and UTF-8 errors are ValueErrors
        why = f"not JSON text: {type(e).__name__}"
    if why is None:
        table = LatencyTable.from_dict(data)
        if table.key == key:
            table.meta["path"] = str(path)
            return table
        why = "it holds the table of another key"
    print(f"prunelab: warning: the cached latency table {path} is unusable ({why}); measuring it again",
          file=sys.stderr)
    return None


def free_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated now on ``device`` (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_measurable(spec: ModelSpec, batch: int, device: torch.device, threads: int | None) -> None:
    """Refuse, before timing anything, a batch whose activations cannot fit in the device's free memory
    and more CPU threads than this process may use (one line each, saying the largest that fits)."""
    # an upper bound: every op's output alive at once, plus the input, in float32
    per_image = 4 * (math.prod(spec.input_size) + sum(op.out_channels * op.out_hw[0] * op.out_hw[1]
                                                      for op in spec.ops))
    free = free_memory(device)
    if free is not None and batch * per_image > free:
        raise ConfigError(f"batch {batch}: measuring {spec.model} at this batch needs about "
                          f"{batch * per_image / 2**30:,.1f} GiB and {device.type} has {free / 2**30:,.1f} GiB free; "
                          f"lower the batch (at most about {max(1, free // per_image):,})")
    if device.type == "cpu" and threads and threads > usable_cpus():
        raise ConfigError(f"threads {threads}: this process may use {usable_cpus()} CPUs; give at most "
                          f"{usable_cpus()} (more threads only time their contention)")


def latency_table(model: str, model_kwargs=None, *, names=None, batch: int = 1, device="cpu",
                  threads: int | None = None, force: bool = False, say=None, **measure_kw) -> LatencyTable:
    """The cached table for this key, measured (and cached) when there is none or ``force``.

    Before measuring (minutes): the batch must fit in memory, the threads in the CPUs, and the cache
    folder must be writable; otherwise one line says so and nothing is measured."""
    from ..utils import atomic_write_text, check_path, check_output_file

    dev = torch.device(device)
    spec = describe(create(model, **(model_kwargs or {})))
    names = list(groups(spec, names))
    key = table_key(model, model_kwargs, names, batch, dev, threads)
    path = table_path(key)
    fix = "point PRUNELAB_CACHE at a writable folder"
    check_path(path.parent, "the latency cache", writable=False, fix=fix)
    if path.is_dir():
        raise ConfigError(f"the latency cache entry {path} is a folder, not a table; remove it and rerun")
    table = None if force else _cached(path, key)
    if table is not None:
        return table
    check_measurable(spec, batch, dev, threads)
    check_output_file(path, "the latency cache", fix=fix)
    if say:
        say(f"measuring a latency table for {model} at batch {batch} on {key['device']} ({key['threads']} threads)")
    table = measure_table(model, model_kwargs, names=names, batch=batch, device=dev, threads=threads, **measure_kw)
    atomic_write_text(path, json.dumps(table.to_dict(), indent=1))
    table.meta["path"] = str(path)
    return table


def measure_latency(module: nn.Module, input_size, *, batch: int = 1, device="cpu", repeats: int = 7,
                    block_ms: float = 50.0, others=()) -> list[float]:
    """Seconds per inference call of ``module`` (and of each of ``others``, interleaved with it in
    every round): the minimum over ``repeats`` rounds. Returns one value per module."""
    device = torch.device(device)
    cl = device.type == "cuda" or batch > 1
    fmt = torch.channels_last if cl else torch.contiguous_format
    mods = [m.to(device, memory_format=fmt).eval() for m in (module, *others)]
    x = torch.randn(batch, *input_size, device=device).contiguous(memory_format=fmt)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = [math.inf] * len(mods)
    with torch.inference_mode():
        for m in mods:
            m(x)
        for _ in range(repeats):
            for i, m in enumerate(mods):
                best[i] = min(best[i], _per_call(m, x, block_ms, sync))
    return best


def default_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
