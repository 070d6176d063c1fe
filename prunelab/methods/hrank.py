"""``hrank``: HRank, filter pruning by the rank of feature maps (Lin et al., CVPR 2020; docs/decisions.md L21-L27).

The score of output channel c of a gated tensor is the average rank of its feature maps:

    s_c = (1/N) sum_{n=1..N} rank(F_{n,c}),    F_{n,c} = ReLU(o_{n,c}) in R^{H x W}

where o is the output of the module the tensor's gate sits on (the BatchNorm after the conv; the conv
itself where there is none) for training image n, in eval mode (BN running statistics). ``rank`` is
``torch.linalg.matrix_rank`` of the float32 map with its default tolerance: singular values above
sigma_max * max(H, W) * eps(float32), the rule of the official ``torch.matrix_rank`` (L24). A higher
average rank means a more important channel. The ranks of all B x C maps of one batch are computed in
one batched call per gated tensor.

**Which map** (L21): ReLU(BN(conv)) of the gated tensor. On the CIFAR ResNets' ``mid`` tensors (the default
slots) that is exactly the official code's hook point, ``layer[i][j].relu1``; for a tensor added into a
residual trunk (``delta``, ``proj``, given in ``method.slots``) the official code scores ``relu2``, after
the addition, whose channels mix in the shortcut that pruning the branch does not remove: the branch's
own ReLU(BN) is scored instead. ``activation: none`` scores the module's output without the ReLU.

**Data** (L23, L26): the first ``batches`` batches (default 5, the official ``--limit``) of the training
loader, at the data config's batch size, in the order of its first epoch, without augmentation when the
loader holds its images (the package's CIFAR loader; other loaders give their batches as they are).

**Across layers** (L22): as ``l1``, ``normalize: mean`` (default) divides each layer's scores by their
mean before the shared budget solver's one global ranking (``none``: raw ranks, which favour the
high-resolution layers, whose maps can reach rank 32 where the last stage's reach 8; ``max``: by the
layer maximum); ``mode: uniform`` keeps the same fraction of every layer, closer to the official
hand-set per-layer rates. Ties (integer ranks) are broken by the solver's order, layer then channel
(L25). Any budget is met through the solver exactly as ``l1`` meets it.

**How the method sees data** (L27). Scoring needs training images, and a method sees data only through the
shared trainer: ``hrank`` (and ``chip``) set ``learns``, and in the learn stage their :meth:`setup`
scores the network on the trainer's training loader; :meth:`should_stop` then ends the stage before any
step, so nothing is trained. A pipeline therefore needs ``stages: {learn: {enabled: true}}`` (any learn
settings; nothing is trained); without it selection refuses with that fix. The scores are kept as the
method's state (saved with ``learn.pt``), so selecting again at another budget, or after a resume, does
not score again. Outside a pipeline, :meth:`FeatureMapScoring.collect` scores a network on any loader.

Sources: M. Lin, R. Ji, Y. Wang, Y. Zhang, B. Zhang, Y. Tian, L. Shao, "HRank: Filter Pruning using
High-Rank Feature Map", CVPR 2020; official code github.com/lmbxmu/HRank (``rank_generation.py``,
``get_feature_hook``; read at commit 0d809c75, the repository is not pinned).

This file also holds :class:`FeatureMapScoring`, the part ``hrank`` and ``chip`` share: collecting
per-channel statistics of the gated tensors' feature maps over training batches, caching them, and
handing them, normalised per layer, to the budget solver.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import register
from .base import Method
from .options import Literal, MethodOptions, dataclass


@dataclass
class FeatureScoreOptions(MethodOptions):
    """``batches``: training batches scored (the data config's batch size); ``normalize``: how each
    layer's scores are scaled before the global ranking (``mean``, ``none``, ``max``, as ``l1``);
    ``activation``: ``relu`` scores ReLU of the gated module's output, ``none`` the output itself."""

    batches: int = 5
    normalize: Literal["mean", "none", "max"] = "mean"
    activation: Literal["relu", "none"] = "relu"

    def check(self):
        super().check()
        if self.batches < 1:
            raise ConfigError(f"method option batches must be >= 1, got {self.batches}")


def scoring_batches(loader, batches: int):
    """The images of the first ``batches`` batches of ``loader``'s first epoch, ``(x, global)`` each.

    A loader holding its images (the package's :class:`~prunelab.data.loader.CifarLoader`: ``images``,
    ``order``, ``normalize``) gives them without augmentation, each whole global batch (every process the
    same images: ``global`` True); any other loader gives its own batches as it makes them (``global``
    False: under DDP each process has its shard)."""
    if all(hasattr(loader, a) for a in ("images", "order", "normalize", "batch_size")):
        order = loader.order(0)
        size = loader.batch_size * getattr(loader, "world_size", 1)
        for step in range(min(batches, math.ceil(len(order) / size))):
            rows = order[step * size:(step + 1) * size]
            yield loader.normalize(loader.images[rows]), True
        return
    source = loader.batches(0) if hasattr(loader, "batches") else iter(loader)
    for i, batch in enumerate(source):
        if i >= batches:
            break
        yield (batch[0] if isinstance(batch, (tuple, list)) else batch), False


def normalized(raw: dict, how: str, eps: float = 1e-12) -> dict:
    """``{name: scores}`` with each layer divided by its mean (``mean``), its maximum (``max``) or as it is
    (``none``); l1's convention (a layer of zeros stays zeros; the divisor is at least ``eps``)."""
    out = {}
    for name, s in raw.items():
        s = np.asarray(s, dtype=np.float64)
        if how == "mean":
            s = s / max(s.mean(), eps)
        elif how == "max":
            s = s / max(s.max(), eps)
        out[name] = s
    return out


def feature_sums(net, tensors, loader, batches: int, stat, *, relu: bool = True, world_size: int = 1):
    """``({tensor name: sum over images of stat(maps)}, images)`` over the first ``batches`` batches of
    ``loader`` (:func:`scoring_batches`), ``net`` in eval mode without gradient. ``maps`` is each gated
    tensor's module output (ReLU'd when ``relu``; a Linear's (B, C) output as (B, C, 1, 1) maps);
    ``stat(maps)`` returns what one batch adds. Under DDP with sharded batches the sums and the image
    count are added over the processes. Shared by ``hrank``, ``chip`` and ``id``."""
    sums: dict = {}

    def hook(name):
        def record(module, inputs, out):
            x = out.detach()
            x = F.relu(x) if relu else x
            if x.dim() == 2:  # a Linear's output: one 1 x 1 map per channel
                x = x[:, :, None, None]
            s = stat(x)
            sums[name] = sums[name] + s if name in sums else s
        return record

    handles = [net.get_submodule(t.module).register_forward_hook(hook(t.name)) for t in tensors]
    was_training, seen, shards = net.training, 0, False
    net.eval()
    try:
        with torch.no_grad():
            for x, whole in scoring_batches(loader, batches):
                net(x)
                seen += len(x)
                shards = shards or not whole
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if shards and sums and distributed:  # each process saw its own shard: add them up
        counted = torch.tensor(float(seen), dtype=torch.float64, device=next(iter(sums.values())).device)
        for name in sorted(sums):
            torch.distributed.all_reduce(sums[name])
        torch.distributed.all_reduce(counted)
        seen = int(counted.item())
    return sums, seen


class FeatureMapScoring(Method):
    """A scoring method whose per-channel score is a statistic of the gated tensors' feature maps,
    averaged over the images of a few training batches (:meth:`channel_scores` says which statistic).

    The raw averages are cached in :attr:`raw` (and in :meth:`state_dict`); :meth:`scores` normalises
    them per layer for the shared budget solver."""

    learns = True  # reads training images through the shared trainer's learn stage; trains nothing
    learn_trains = False
    Options = FeatureScoreOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.raw: dict[str, np.ndarray] | None = None
        self.images = 0

    # -- the statistic -----------------------------------------------------------------------------
    def channel_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` scores of the ``(B, C, H, W)`` float32 feature maps ``maps`` of one batch."""
        raise NotImplementedError

    # -- collecting --------------------------------------------------------------------------------
    def collect(self, model, loader, spec=None, *, world_size: int = 1) -> dict:
        """Score ``model`` (a plain network or a gated model of it) on the first ``batches`` batches of
        ``loader`` (:func:`scoring_batches`), in eval mode, without gradient; caches and returns the raw
        per-channel averages ``{tensor name: float64 array}``."""
        from ..models.registry import describe
        from ..pruning.gates import GatedModel

        net = model.net if isinstance(model, GatedModel) else model
        if spec is None:
            spec = self.spec if self.spec is not None else (
                model.spec if isinstance(model, GatedModel) else describe(net))
        tensors = self.tensors(spec)
        relu = self.options.activation == "relu"
        sums, seen = feature_sums(net, tensors, loader, self.options.batches,
                                  lambda x: self.channel_scores(x.float()).double().sum(0),
                                  relu=relu, world_size=world_size)
        if not seen:
            raise ConfigError(f"method {self.name} found no training images to score (the loader gave no batch)")
        self.raw = {t.name: (sums[t.name] / seen).cpu().numpy() for t in tensors}
        self.images = seen
        return self.raw

    # -- the trainer's hook: score, then stop before any step ----------------------------------------
    def setup(self, trainer):
        self.collect(trainer.model, trainer.train_loader, world_size=trainer.world_size)

    def should_stop(self, trainer):
        return self.raw is not None

    def state_dict(self):
        if self.raw is None:
            return {}
        return {"scores": {n: torch.from_numpy(np.asarray(s, dtype=np.float64)) for n, s in self.raw.items()},
                "images": self.images}

    def load_state_dict(self, state):
        scores = state.get("scores")
        self.raw = None if scores is None else {n: s.double().numpy() for n, s in scores.items()}
        self.images = int(state.get("images", 0))

    # -- selection ---------------------------------------------------------------------------------
    def scores(self, model, spec):
        if self.raw is None:
            raise ConfigError(f"method {self.name} scores channels on training images, which it reads in the learn "
                              f"stage (it trains nothing there): add stages: {{learn: {{enabled: true}}}} to the "
                              f"config (--set stages.learn.enabled=true), or call collect(model, loader) first")
        names = [t.name for t in self.tensors(spec)]
        missing = [n for n in names if n not in self.raw]
        if missing:
            raise ConfigError(f"method {self.name} has no scores for {', '.join(missing[:3])} of {spec.model}: its "
                              f"scores were collected on another network or other slots; score this one again")
        return normalized({n: self.raw[n] for n in names}, self.options.normalize)

    def select(self, model, spec, budget):
        structure, report = super().select(model, spec, budget)
        report.extra["scored_images"] = self.images
        return structure, report


@register("hrank")
class HRank(FeatureMapScoring):
    """Average matrix rank of each channel's feature maps (higher: kept first)."""

    def channel_scores(self, maps):
        return feature_map_ranks(maps)


def feature_map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` ranks of the ``(B, C, H, W)`` maps, in one batched ``torch.linalg.matrix_rank`` call
    (default tolerance: sigma_max * max(H, W) * eps of the maps' dtype)."""
    b, c, h, w = maps.shape
    return torch.linalg.matrix_rank(maps.reshape(b * c, h, w)).reshape(b, c)
