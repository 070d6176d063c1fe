"""Budgets and the solver that turns per-channel scores into a structure meeting one.

A :class:`Budget` names a metric (``macs``, ``flops``, ``params``, ``volume`` or ``channels``) and a
target given as a remaining fraction (``keep``), a ``reduction`` (1 - keep) or a ``factor`` (1/keep),
relative to the dense model (or to an explicit ``reference`` cost, e.g. PFS's unexpanded network).

:func:`solve_budget` ranks all channels globally by score (ties broken by layer then channel index),
keeps at least ``min_channels`` per layer, bisects the number of channels kept to the largest count
whose cost stays within the target, then refines channel by channel down the ranking while the cost
still fits. ``mode="uniform"`` keeps the same fraction of every layer instead. Coupled tensors
(``groups``: e.g. the contributors of a residual trunk) share one mask, scored by the sum of their
members' scores. The achieved value is always reported next to the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..counting import count
from ..errors import ConfigError
from ..models.spec import ModelSpec
from .structure import Structure

METRICS = ("macs", "flops", "params", "volume", "channels", "latency")
ROUNDINGS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Budget:
    """A resource target: ``metric`` kept at ``keep`` x the reference (keep = 1 - reduction = 1/factor).

    ``metric="latency"``: measured inference time on this device, predicted from a latency table
    (:mod:`prunelab.pruning.latency`) at ``batch`` images per call (``threads`` CPU threads, ``device``);
    ``round_to``: kept widths are multiples of this (1: any width; ``"auto"``: the multiple among
    1, 2, 4, 8, 16 that keeps the most channels within the same predicted latency, i.e. the table decides).
    """

    metric: str
    keep: float
    batch: int = 1
    threads: int | None = None
    device: str = "cpu"
    round_to: int | str = 1

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ConfigError(f"budget metric must be one of {METRICS}, got {self.metric!r}")
        k = self.keep
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or not 0 < k <= 1:
            raise ConfigError(f"budget keep must be a number in (0, 1], got {k!r} (0.5 keeps half)")
        if self.round_to != "auto" and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                        or self.round_to < 1):
            raise ConfigError(f"budget round_to must be a whole number >= 1 or auto, got {self.round_to!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"budget batch must be a whole number >= 1, got {self.batch!r}")

    @classmethod
    def parse(cls, spec) -> "Budget":
        """From ``{"metric": "macs", "keep": 0.5}`` (or ``"reduction": 0.5`` or ``"factor": 2``)."""
        if isinstance(spec, Budget):
            return spec
        if not isinstance(spec, dict):
            raise ConfigError(f"budget must be a mapping like {{metric: macs, keep: 0.5}}, got {spec!r}")
        metric = spec.get("metric", "macs")
        if metric not in METRICS:
            raise ConfigError(f"budget.metric must be one of {METRICS}, got {metric!r}")
        given = [k for k in ("keep", "reduction", "factor") if spec.get(k) is not None]
        latency_keys = {"batch", "threads", "device", "round_to"}
        unknown = set(spec) - {"metric", "keep", "reduction", "factor", "mode", "reference"} - latency_keys
        if unknown:
            raise ConfigError(f"unknown budget key(s) {sorted(unknown)}; valid: metric, keep, reduction, factor "
                              f"(and for metric latency: batch, threads, device, round_to)")
        if metric != "latency" and set(spec) & (latency_keys - {"round_to"}):
            raise ConfigError(f"budget keys {sorted(set(spec) & latency_keys)} belong to metric latency, not {metric}")
        if len(given) != 1:
            raise ConfigError("budget needs exactly one of keep (remaining fraction), reduction or factor")
        k = given[0]
        try:
            if isinstance(spec[k], bool):
                raise TypeError
            v = float(spec[k])
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"budget.{k} must be a number, got {spec[k]!r}") from None
        if not math.isfinite(v):
            raise ConfigError(f"budget.{k} must be a finite number, got {spec[k]!r}")
        if k == "keep" and not 0 < v <= 1:
            raise ConfigError(f"budget.keep must be in (0, 1], got {v} (0.5 keeps half)")
        if k == "reduction" and not 0 <= v < 1:
            raise ConfigError(f"budget.reduction must be in [0, 1), got {v} (0.5 removes half)")
        if k == "factor" and not v >= 1:
            raise ConfigError(f"budget.factor must be >= 1, got {v} (2 halves the cost)")
        keep = v if k == "keep" else (1 - v if k == "reduction" else 1 / v)
        extra = {}
        for name in ("batch", "threads"):
            if spec.get(name) is not None:
                n = spec[name]
                if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n < 1:
                    raise ConfigError(f"budget.{name} must be a whole number >= 1, got {n!r}")
                extra[name] = int(n)
        if spec.get("device") is not None:
            if spec["device"] not in ("cpu", "cuda") and not str(spec["device"]).startswith("cuda:"):
                raise ConfigError(f"budget.device must be cpu, cuda or cuda:N, got {spec['device']!r}")
            extra["device"] = str(spec["device"])
        if spec.get("round_to") is not None:
            r = spec["round_to"]
            if r != "auto" and (isinstance(r, bool) or not isinstance(r, (int, float)) or r != int(r) or r < 1):
                raise ConfigError(f"budget.round_to must be a whole number >= 1 or auto, got {r!r}")
            extra["round_to"] = r if r == "auto" else int(r)
        return cls(metric, keep, **extra)

    @property
    def factor(self) -> float:
        return 1 / self.keep

    @property
    def reduction(self) -> float:
        return 1 - self.keep

    def describe(self) -> str:
        return f"{self.metric} x{self.keep:.4g} (factor {self.factor:.3g}, reduction {100 * self.reduction:.1f}%)"


def measure(spec: ModelSpec, structure_or_alive, metric: str, *, residual="mixed", count_pool=False,
            scored=None, latency=None) -> float:
    """The value of one budget metric for a structure (``latency``: the table's prediction, seconds)."""
    if metric == "latency":
        if latency is None:
            raise ConfigError("a latency budget needs a latency table (prunelab latency-table MODEL)")
        return latency.predict_structure(structure_or_alive)
    if metric == "channels":
        alive = getattr(structure_or_alive, "alive", structure_or_alive) or {}
        names = scored or [t.name for t in spec.tensors]
        return float(sum(len(alive[n]) if n in alive else spec.tensor(n).channels for n in names))
    c = count(spec, structure_or_alive, residual=residual, count_pool=count_pool)
    return float({"macs": c.macs, "flops": c.flops, "params": c.params, "volume": c.volume}[metric])


class _Units:
    """Selection units: single tensors, or groups of tensors sharing one mask."""

    def __init__(self, spec: ModelSpec, scores: dict, groups):
        grouped = set()
        self.members: list[list[str]] = []
        self.scores: list[np.ndarray] = []
        for g in groups or ():
            g = [n for n in g if n in scores]
            if not g:
                continue
            widths = {spec.tensor(n).channels for n in g}
            if len(widths) != 1:
                raise ValueError(f"grouped tensors must have equal widths: {g}")
            self.members.append(g)
            self.scores.append(np.sum([np.asarray(scores[n], dtype=np.float64) for n in g], axis=0))
            grouped |= set(g)
        for t in spec.tensors:  # spec order keeps tie-breaking deterministic
            if t.name in scores and t.name not in grouped:
                s = np.asarray(scores[t.name], dtype=np.float64)
                if s.shape != (t.channels,):
                    raise ValueError(f"scores of {t.name} have shape {s.shape}, expected ({t.channels},)")
                self.members.append([t.name])
                self.scores.append(s)
        self.sizes = np.array([len(s) for s in self.scores])
        # global order: score descending, then unit (layer) index, then channel index
        unit = np.concatenate([np.full(n, i) for i, n in enumerate(self.sizes)])
        chan = np.concatenate([np.arange(n) for n in self.sizes])
        allscores = np.concatenate(self.scores)
        self.order = np.lexsort((chan, unit, -allscores))
        self.unit_of, self.chan_of, self.all_scores = unit, chan, allscores
        # each unit's own ranking (for minimum channels and uniform mode)
        self.rank_in_unit = [np.lexsort((np.arange(len(s)), -s)) for s in self.scores]

    def alive(self, keep_sets: list[np.ndarray]) -> dict:
        out = {}
        for members, k in zip(self.members, keep_sets):
            for n in members:
                out[n] = np.sort(k)
        return out


def solve_budget(spec: ModelSpec, scores: dict, budget: Budget | dict, *, mode: str = "global", groups=None,
                 min_channels: int = 1, residual: str = "mixed", count_pool: bool = False,
                 reference: float | None = None, refine: bool = True, model_kwargs=None,
                 tolerance: float = 0.005, latency=None, warn: bool = True) -> tuple[Structure, dict]:
    """Choose the channels to keep so that ``budget`` is met.

    Args:
        spec: the dense model's spec.
        scores: ``{tensor name: (C,) scores}``; higher is more important. Tensors without scores are
            not pruned.
        budget: a :class:`Budget` or its dict form.
        mode: ``"global"`` (one ranking over all channels) or ``"uniform"`` (same fraction per layer).
        groups: lists of tensor names that share one mask.
        min_channels: channels every scored tensor keeps at least.
        residual, count_pool: counter flags (see :func:`prunelab.counting.count`).
        reference: the value the budget is relative to (default: the dense model's).
        refine: after bisection, add lower-ranked channels one by one while the cost fits.
        tolerance: relative distance to the target reported as met.
        latency: the :class:`~prunelab.pruning.latency.LatencyTable` of a latency budget (default: the
            cached table for the budget's batch, device and threads, measured when missing).
        warn: say in one line on stderr when the target is below what the scored tensors can reach.

    A target below the *floor* (the cost with every scored tensor at ``min_channels``, or, in uniform
    mode, at its smallest fraction) cannot be met by these tensors: the solver stops at the floor (for a
    latency budget keeping every channel whose removal would not lower the predicted time, e.g. of a
    group whose measured time does not fall with its width), reports ``reachable: False`` with
    ``floor`` and ``floor_keep``, and ``unreachable`` says in one line (also on stderr, unless
    ``warn=False``) the floor and which slot set would go lower.

    A budget's ``round_to`` m keeps multiples of m channels per tensor (a tensor's top-ranked ones;
    at least ``min_channels``, the full width allowed); ``"auto"`` solves with each m of 1, 2, 4, 8,
    16 and keeps the structure with the most channels (ties: the smaller m).

    Returns:
        ``(structure, report)``; the report holds the target, the achieved value and their ratio.
    """
    budget = Budget.parse(budget)
    if mode not in ("global", "uniform"):
        raise ConfigError(f"budget mode must be 'global' or 'uniform', got {mode!r}")
    units = _Units(spec, scores, groups)
    if not units.members:
        raise ConfigError("no scored tensors: nothing to prune")
    scored = [n for m in units.members for n in m]
    if budget.metric == "latency" and latency is None:
        from .latency import latency_table

        latency = latency_table(spec.model, model_kwargs, names=scored, batch=budget.batch, device=budget.device,
                                threads=budget.threads)
    kw = dict(residual=residual, count_pool=count_pool, scored=scored, latency=latency)
    metric = "macs" if budget.metric == "flops" else budget.metric  # flops = 2 x macs: same ratio
    ref = reference if reference is not None else measure(spec, {}, metric, **kw)
    if reference is not None and budget.metric == "flops":
        ref = reference / 2
    target = budget.keep * ref
    sizes = units.sizes
    mins = np.minimum(sizes, max(0, int(min_channels)))
    if budget.round_to == "auto":
        tried = []
        for m in ROUNDINGS:
            st, rep = solve_budget(spec, scores, Budget(budget.metric, budget.keep, budget.batch, budget.threads,
                                                        budget.device, m), mode=mode, groups=groups,
                                   min_channels=min_channels, residual=residual, count_pool=count_pool,
                                   reference=reference, refine=refine, model_kwargs=model_kwargs,
                                   tolerance=tolerance, latency=latency, warn=False)
            tried.append((rep["channels_kept"], -m, st, rep))
        def fits(rep):
            return rep["achieved"] <= rep["target"] * (1 + 1e-9)

        kept, neg_m, st, rep = max(tried, key=lambda t: (t[0] * fits(t[3]), t[1]))
        rep["round_to"] = {"auto": -neg_m}
        rep["round_to_tried"] = {str(-t[1]): {"channels_kept": t[0], "fits": fits(t[3])} for t in tried}
        st.meta["budget"] = rep
        if warn and rep.get("unreachable"):
            _say_unreachable(rep["unreachable"])
        return st, rep
    step = int(budget.round_to)

    def rounded(keep):
        if step == 1:
            return keep
        out = []
        for u, k in enumerate(keep):
            n = len(k)
            if n < sizes[u]:
                n = max(int(mins[u]), (n // step) * step, min(step, int(sizes[u])) if mins[u] > 0 else 0)
            out.append(units.rank_in_unit[u][:n] if n != len(k) else k)
        return out

    def keep_sets_global(k: int):

        keep = [list(units.rank_in_unit[u][:mins[u]]) for u in range(len(sizes))]
        forced = {(u, c) for u in range(len(sizes)) for c in keep[u]}
        taken = sum(len(x) for x in keep)
        for j in units.order:
            if taken >= k:
                break
            u, c = units.unit_of[j], units.chan_of[j]
            if (u, c) in forced:
                continue
            keep[u].append(c)
            taken += 1
        return rounded([np.array(x, dtype=np.int64) for x in keep])

    def keep_sets_uniform(ratio: float):
        return rounded([units.rank_in_unit[u][:max(mins[u], min(sizes[u], int(math.ceil(ratio * sizes[u] - 1e-9))))]
                        for u in range(len(sizes))])

    def cost_of(keep):
        return measure(spec, units.alive(keep), metric, **kw)

    iterations = 0
    floor = None  # the lowest cost the scored tensors reach, when the target is below it
    if mode == "global":
        lo, hi = int(mins.sum()), int(sizes.sum())
        if cost_of(keep_sets_global(lo)) > target:
            best = keep_sets_global(lo)
            floor = cost_of(best)
            if refine and step == 1 and metric == "latency":  # keep what costs no time: stop at the floor
                best = _refine(units, best, cost_of, floor * (1 + 1e-9))
        else:
            while lo < hi:  # largest k whose cost fits
                mid = (lo + hi + 1) // 2
                iterations += 1
                if cost_of(keep_sets_global(mid)) <= target:
                    lo = mid
                else:
                    hi = mid - 1
            best = keep_sets_global(lo)
            if refine and step == 1:
                best = _refine(units, best, cost_of, target)
    else:
        lo, hi = 0.0, 1.0
        if cost_of(keep_sets_uniform(0.0)) > target:
            best = keep_sets_uniform(0.0)
            floor = cost_of(best)
        else:
            for _ in range(40):
                mid = (lo + hi) / 2
                iterations += 1
                if cost_of(keep_sets_uniform(mid)) <= target:
                    lo = mid
                else:
                    hi = mid
            best = keep_sets_uniform(lo)
    alive = units.alive(best)
    achieved = cost_of(best)
    kept_scores = np.concatenate([units.scores[u][best[u]] for u in range(len(sizes))])
    report = {
        "metric": budget.metric, "mode": mode, "target_keep": budget.keep, "target_factor": budget.factor,
        "reference": ref * (2 if budget.metric == "flops" else 1), "target": target * (2 if budget.metric == "flops" else 1),
        "achieved": achieved * (2 if budget.metric == "flops" else 1), "achieved_keep": achieved / ref,
        "achieved_factor": ref / achieved if achieved else math.inf,
        "relative_error": (achieved - target) / target, "within_tolerance": abs(achieved - target) <= tolerance * target,
        "channels_kept": int(sum(len(b) for b in best)), "channels_total": int(sizes.sum()),
        "zero_score_kept": int(np.sum(kept_scores == 0)), "iterations": iterations,
        "residual": residual, "count_pool": count_pool, "min_channels": int(min_channels), "round_to": step,
    }
    if budget.metric == "latency":
        report.update({"batch": budget.batch, "device": latency.key.get("device"), "threads": latency.key.get("threads"),
                       "latency_table": latency.meta.get("path"), "unit": "seconds per call (predicted)"})
    report["reachable"] = floor is None
    if floor is not None:
        unit = 2 if budget.metric == "flops" else 1
        report.update({"floor": floor * unit, "floor_keep": floor / ref,
                       "unreachable": _unreachable_line(spec, budget, scored, floor / ref, floor, min_channels, mode)})
        if warn:
            _say_unreachable(report["unreachable"])
    structure = Structure._make(spec, alive, model_kwargs=model_kwargs, meta={"budget": report})
    return structure, report


def _unreachable_line(spec: ModelSpec, budget: Budget, scored: list, floor_keep: float, floor: float,
                      min_channels: int, mode: str) -> str:
    """One line: the target, the floor the scored tensors stop at, and what would go lower."""
    used = sorted({spec.tensor(n).slot for n in scored if n in spec}, key=str)
    others = [s for s in spec.slots() if s not in used]
    at = (f"with every pruned tensor at min_channels {int(min_channels)}" if mode == "global"
          else "at the smallest uniform fraction")
    head = (f"{budget.metric} budget keep {budget.keep:.4g} is below what slots {used} can reach: {at} they stop at a "
            f"floor of {100 * floor_keep:.1f}% of the dense network's {budget.metric}")
    if budget.metric == "latency":
        head += f" ({1e3 * floor:.3g} ms per call predicted at batch {budget.batch})"
        lower = (f"pruning slots {used + others} (method.slots, with method.groups: trunk) under a macs budget would "
                 f"go lower (a latency table times only block-internal channels; the rest of the time is the stem, "
                 f"the residual trunks, the classifier and per-call overhead)" if others else
                 "no other slot set of this model would go lower (the rest of the time is the stem, the classifier "
                 "and per-call overhead)")
    else:
        lower = (f"method.slots {used + others} or a lower method.min_channels would go lower" if others else
                 "a lower method.min_channels would go lower")
    return f"{head}; stopped there: {lower}"


def _say_unreachable(line: str) -> None:
    import sys

    print(f"prunelab: warning: {line}", file=sys.stderr, flush=True)


def _refine(units: _Units, keep: list, cost_of, target: float, max_tries: int = 4000) -> list:
    """Walk down the global ranking and add every channel that still fits the budget."""
    kept = {(u, int(c)) for u in range(len(keep)) for c in keep[u]}
    keep = [list(k) for k in keep]
    current = cost_of([np.array(k) for k in keep])
    tries = 0
    for j in units.order:
        u, c = int(units.unit_of[j]), int(units.chan_of[j])
        if (u, c) in kept:
            continue
        if tries >= max_tries or current >= target:
            break
        tries += 1
        keep[u].append(c)
        new = cost_of([np.array(k) for k in keep])
        if new <= target:
            kept.add((u, c))
            current = new
        else:
            keep[u].pop()
    return [np.array(k, dtype=np.int64) for k in keep]
