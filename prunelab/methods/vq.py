"""``vq``: vector quantisation of filters with the next layer merged (BAR's VQ baseline; docs/decisions.md L7).

For each gated tensor with C channels that keeps k of them:

1. **Features** (data-free): channel c's *BN-folded filter*, the affine map from the conv's input to the
   pre-ReLU value of channel c in eval mode,

       f_c = [ s_c * W_c.flatten(),  beta_c + s_c * (b_c - mu_c) ],   s_c = gamma_c / sqrt(var_c + eps)

   (W_c the producing conv's filter, b_c its bias or 0; gamma, beta, mu, var the BatchNorm's weight, bias
   and running statistics; where the gated module is not a BatchNorm, s_c = 1 and mu_c = 0). Two channels
   with equal features compute the same activation, ReLU or not, on every input.
2. **k-means** (Lloyd, k-means++ seeding from ``seed``, at most ``iters`` iterations, float64) over the C
   feature vectors into k clusters; an emptied cluster takes the point farthest from its centre in a
   cluster of two or more, so that there are always k non-empty clusters.
3. **Representatives:** per cluster, the member nearest its centroid (lowest index on ties); these k
   channels are kept.
4. **Merge** (``reconstruct: true``, default): the next conv's input weights of every removed channel are
   added onto its cluster representative's, ``W'[:, r] = sum_{c in cluster(r)} W[:, c]``, then the removed
   channels are compacted away. If a cluster's channels are identical the network is unchanged.

**Widths** (how many channels each layer keeps): the shared budget solver (:func:`solve_budget`, as
``l1``; ``mode: global`` default, or ``uniform``) on a *redundancy score*: each channel's feature distance
to its nearest other channel in the layer, divided by the layer's mean (``normalize``). A layer whose
channels are close together therefore gives up more channels (non-uniform widths, as BAR's VQ factors
are). The solver's widths are kept; which channels survive is decided by the clustering (the cost of a
tensor read by one conv depends only on its width, so the solver's achieved cost is unchanged).

**Where it applies:** only gated tensors read by exactly one op, a non-depthwise conv reading that tensor
alone (the CIFAR ResNets' ``mid``, the default slots); other slots are refused with the fix
(``method.slots``). The merge is exact for what that conv reads: ReLU of the gated (BN) output.

This file also holds :class:`NextLayerReconstruction`, the part ``vq`` and ``id``
(:mod:`.interp_decomp`) share: the single-consumer check, widths from the solver, and writing the
reconstructed next-layer weights into a copy of the network before the shared compaction (and into the
masked reference the conformance test compares the compact network with).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..pruning.budget import solve_budget
from ..pruning.compact import compact
from ..pruning.gates import GatedModel
from ..pruning.result import SelectReport
from . import register
from .base import Method, _kwargs
from .hrank import normalized
from .options import Literal, MethodOptions, dataclass


def single_consumers(spec, tensors, method: str) -> dict:
    """``{tensor name: op}``: the one conv reading each of ``tensors``; raises :class:`ConfigError` naming
    ``method.slots`` for a tensor read by anything else (several ops, a Linear, a depthwise conv, a
    residual addition)."""
    out = {}
    for t in tensors:
        readers = [op for op in spec.ops if t.name in op.reads]
        ok = (len(readers) == 1 and readers[0].kind == "conv" and not readers[0].depthwise
              and tuple(readers[0].reads) == (t.name,) and t.trunk is None)
        if not ok:
            who = ", ".join(f"{op.name} ({op.kind})" for op in readers) or "no op"
            good = [s for s in spec.slots() if all(read_by_one_conv(spec, u) for u in spec.select((s,)))]
            fix = (f"set method.slots to some of {good}" if good else
                   f"no slot of {spec.model} has all its tensors read by one conv alone, so no method.slots "
                   f"fixes it; use a method without next-layer reconstruction (e.g. l1)")
            raise ConfigError(f"method {method} reconstructs the next layer, so each gated tensor must be read by "
                              f"exactly one conv and nothing else: {t.name} (slot {t.slot!r}) is read by {who}"
                              f"{' and added into a residual trunk' if t.trunk else ''}; {fix}")
        out[t.name] = readers[0]
    return out


def read_by_one_conv(spec, t) -> bool:
    """Whether tensor ``t`` is read by exactly one (non-depthwise) conv reading it alone, outside any residual
    trunk: where the next layer can absorb a reconstruction exactly."""
    readers = [op for op in spec.ops if t.name in op.reads]
    return (len(readers) == 1 and readers[0].kind == "conv" and not readers[0].depthwise
            and tuple(readers[0].reads) == (t.name,) and t.trunk is None)


@dataclass
class ReconstructionOptions(MethodOptions):
    """``reconstruct``: write the reconstructed next-layer weights before compaction (false: the selected
    channels are simply removed, the ablation that shows what the reconstruction does); ``normalize``:
    how each layer's selection scores are scaled before the solver's global ranking (as ``l1``)."""

    reconstruct: bool = True
    normalize: Literal["mean", "none", "max"] = "mean"


class NextLayerReconstruction(Method):
    """A method that keeps some channels of each gated tensor and rewrites the input weights of the one
    conv reading it so that it sees a reconstruction of all channels from the kept ones.

    Subclasses give :meth:`scores` (for the solver's widths), :meth:`build` (which channels of each
    tensor a width keeps, as a structure) and :meth:`next_weights` (the new input weights of the kept
    channels)."""

    Options = ReconstructionOptions

    # -- placement ---------------------------------------------------------------------------------
    def consumers(self, spec) -> dict:
        return single_consumers(spec, self.tensors(spec), self.name)

    def prepare(self, spec, budget):
        self.consumers(spec)
        super().prepare(spec, budget)

    def _spec_for(self, net, structure):
        if self.spec is not None and self.spec.model == structure.model:
            return self.spec
        from ..models.registry import describe

        return describe(net)

    # -- selection ---------------------------------------------------------------------------------
    def build(self, model, spec, widths: dict):
        """The structure keeping ``widths[name]`` channels of each gated tensor (full where absent)."""
        raise NotImplementedError

    def next_weights(self, net, spec, structure, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The next conv's new weight (same shape as ``weight``, its input channels the gated tensor's);
        only the columns of the kept channels matter."""
        raise NotImplementedError

    def select(self, model, spec, budget):
        if budget is None:
            raise ConfigError(f"method {self.name} needs a budget (e.g. budget: {{metric: macs, keep: 0.5}})")
        solved, report = solve_budget(spec, self.scores(model, spec), budget, mode=self.options.mode,
                                      groups=self.groups(spec), min_channels=self.options.min_channels,
                                      model_kwargs=_kwargs(model))
        structure = self.build(model, spec, solved.counts())
        structure.meta = {**solved.meta, **structure.meta}
        widths, solved_widths = structure.counts(), solved.counts()
        if any(widths.get(t.name) != solved_widths.get(t.name) for t in self.tensors(spec)):  # an internal error
            raise RuntimeError(f"method {self.name} built other widths than the budget solver chose")
        rep = SelectReport.from_budget(report, structure)
        rep.extra["reconstruct"] = bool(self.options.reconstruct)
        return structure, rep

    # -- reconstruction ----------------------------------------------------------------------------
    def reconstructed(self, model, structure) -> nn.Module:
        """A copy of the dense network with the next conv of every pruned gated tensor holding its
        reconstructed input weights (``reconstruct: false``: an unchanged copy)."""
        net = model.net if isinstance(model, GatedModel) else model
        spec = self._spec_for(net, structure)
        out = copy.deepcopy(net)
        if not self.options.reconstruct:
            return out
        consumers = single_consumers(spec, [t for t in spec.tensors if t.name in structure.alive], self.name)
        with torch.no_grad():
            for name, alive in structure.alive.items():
                if len(alive) == structure.channels[name]:
                    continue
                conv = out.get_submodule(consumers[name].name)
                new = self.next_weights(net, spec, structure, name, conv.weight.detach().double())
                conv.weight.copy_(new.to(conv.weight.dtype))
        return out

    def hard_prune(self, model, structure):
        return compact(self.reconstructed(model, structure), structure)

    def masked(self, model, structure):
        return super().masked(self.reconstructed(model, structure), structure)


# -- VQ ------------------------------------------------------------------------------------------------
def folded_filters(net, spec, name: str) -> np.ndarray:
    """``(C, D)`` float64: each channel's BN-folded filter and bias (the affine map to its pre-ReLU value)."""
    t = spec.tensor(name)
    conv = net.get_submodule(t.conv)
    w = conv.weight.detach().double().flatten(1)
    b = conv.bias.detach().double() if getattr(conv, "bias", None) is not None else torch.zeros(len(w), dtype=w.dtype)
    mod = net.get_submodule(t.module)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod is not conv:
        s = (mod.weight.detach().double() if mod.affine else torch.ones_like(b)) / torch.sqrt(
            mod.running_var.double() + mod.eps)
        beta = mod.bias.detach().double() if mod.affine else torch.zeros_like(b)
        w, b = w * s[:, None], beta + s * (b - mod.running_mean.double())
    return torch.cat([w, b[:, None]], 1).cpu().numpy()


def _sqdist(x, c):
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None], 0.0)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, centres)`` of Lloyd's k-means of the rows of ``x`` into exactly ``k`` non-empty clusters,
    k-means++ seeded from ``seed``."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means of {n} points into {k} clusters")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    d2 = _sqdist(x, x[chosen]).min(1)
    while len(chosen) < k:
        free = np.setdiff1d(np.arange(n), chosen)
        p = d2[free]
        idx = int(free[rng.choice(len(free), p=p / p.sum())]) if p.sum() > 0 else int(free[0])
        chosen.append(idx)
        d2 = np.minimum(d2, _sqdist(x, x[[idx]])[:, 0])
    centres = x[chosen].copy()
    labels = None
    for _ in range(iters):
        new = _sqdist(x, centres).argmin(1)
        new = _fill_empty(x, new, centres, k)
        if labels is not None and (new == labels).all():
            break
        labels = new
        centres = np.stack([x[labels == j].mean(0) for j in range(k)])
    return labels, centres


def _fill_empty(x, labels, centres, k):
    labels = labels.copy()
    while True:
        sizes = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if not len(empty):
            return labels
        d = ((x - centres[labels]) ** 2).sum(1)
        d[sizes[labels] < 2] = -1.0
        i = int(np.argmax(d))
        labels[i] = empty[0]
        centres[empty[0]] = x[i]


def representatives(x, labels, centres) -> np.ndarray:
    """``rep_of[c]``: the representative channel of channel c's cluster (the member nearest the centroid)."""
    rep_of = np.empty(len(x), dtype=np.int64)
    for j in np.unique(labels):
        members = np.flatnonzero(labels == j)
        r = members[np.argmin(((x[members] - centres[j]) ** 2).sum(1))]
        rep_of[members] = r
    return rep_of


@dataclass
class VQOptions(ReconstructionOptions):
    """``seed``: k-means++ seeding; ``iters``: at most this many Lloyd iterations."""

    seed: int = 0
    iters: int = 100

    def check(self):
        super().check()
        if self.iters < 1:
            raise ConfigError(f"method option iters must be >= 1, got {self.iters}")


@register("vq")
class VectorQuantization(NextLayerReconstruction):
    """k-means over each layer's BN-folded filters; one representative per cluster; the next conv's input
    weights of a cluster summed onto its representative."""

    Options = VQOptions

    def scores(self, model, spec):
        net = model.net if isinstance(model, GatedModel) else model
        out = {}
        for t in self.tensors(spec):
            f = folded_filters(net, spec, t.name)
            d = _sqdist(f, f)
            np.fill_diagonal(d, np.inf)
            out[t.name] = np.sqrt(d.min(1)) if len(f) > 1 else np.ones(1)
        return normalized(out, self.options.normalize)

    def build(self, model, spec, widths):
        from ..pruning.structure import Structure

        net = model.net if isinstance(model, GatedModel) else model
        alive, plan = {}, {}
        for t in self.tensors(spec):
            k = int(widths.get(t.name, t.channels))
            if k >= t.channels:
                continue
            f = folded_filters(net, spec, t.name)
            labels, centres = kmeans(f, k, self.options.seed, self.options.iters)
            rep_of = representatives(f, labels, centres)
            alive[t.name] = np.unique(rep_of)
            plan[t.name] = rep_of.tolist()
        s = Structure.full(spec, [t.name for t in self.tensors(spec)], model_kwargs=_kwargs(model))
        s = s.with_alive(alive, spec)
        s.meta = {**s.meta, "vq_representative": plan}
        return s

    def next_weights(self, net, spec, structure, name, weight):
        alive = np.asarray(structure.alive[name])
        rep_of = (structure.meta.get("vq_representative") or {}).get(name)
        if rep_of is None or set(np.unique(rep_of).tolist()) != set(alive.tolist()):
            # a structure from elsewhere: each removed channel joins its nearest kept one
            f = folded_filters(net, spec, name)
            rep_of = alive[_sqdist(f, f[alive]).argmin(1)]
            rep_of[alive] = alive
        rep_of = torch.as_tensor(np.asarray(rep_of), dtype=torch.long)
        new = weight.clone()
        new[:, alive] = 0
        new.index_add_(1, rep_of, weight)  # W'[:, r] = sum over r's cluster of W[:, c]
        return new
