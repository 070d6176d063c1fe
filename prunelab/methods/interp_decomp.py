"""``id``: interpolative decomposition of activations, the next layer reconstructing all channels (BAR's ID
baseline; docs/decisions.md L8).

For a gated tensor with C channels, let A (n x C) hold what the next conv reads, ReLU of the gated
module's output (the BatchNorm after the conv, eval mode), one row per pixel of the first ``batches``
training batches (n = images x H x W). The method keeps the Gram matrix G = A^T A (C x C, float64,
summed over the batches; saved as the method's state, so A is never stored).

1. **Skeleton** (column-pivoted QR): ``scipy.linalg.qr(B, pivoting=True)`` of B = G^{1/2} (the symmetric
   PSD square root, eigh). B^T B = A^T A, so the pivots and |R_ii| are those of the column-pivoted QR of
   A itself. A width of k keeps the first k pivots, the skeleton S.
2. **Interpolation matrix** T (k x C): the least-squares solution of A ≈ A[:, S] T, from the normal
   equations G[S, S] T = G[S, :] (``numpy.linalg.lstsq``; T[:, S] = I where A[:, S] has full column rank).
3. **Next layer** (``reconstruct: true``, default): the conv reading the tensor gets, for its kept input
   channels, ``W'[:, S] = W @ T^T`` (over the input-channel axis, each kernel tap alike): it applies W to
   the reconstruction ``x ≈ T^T x_S`` of every channel at every pixel. Zero padding reconstructs to zero,
   so the 3 x 3 conv sees exactly the reconstructed map. The removed channels are then compacted away.

**Widths:** the shared budget solver (as ``l1``; ``mode: global`` default or ``uniform``) on each channel's
|R_ii| at its pivot position (the norm of what it adds beyond the channels pivoted before it), divided by
the layer's mean (``normalize``). Within a layer the solver's order is the pivot order, so its kept set
is the skeleton (the structure is built from the pivots either way).

**Data** (as ``hrank``, L27): the learn stage reads the first ``batches`` (default 5) training batches
without augmentation through the shared trainer and trains nothing (``stages.learn.enabled: true``).
**Where it applies:** tensors read by exactly one conv (``mid``), as ``vq``; others refused naming
``method.slots``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ..errors import ConfigError
from . import register
from .base import _kwargs
from .hrank import feature_sums, normalized
from .options import dataclass
from .vq import NextLayerReconstruction, ReconstructionOptions


@dataclass
class IDOptions(ReconstructionOptions):
    """``batches``: training batches read for the activation Gram matrices (the data config's batch size)."""

    batches: int = 5

    def check(self):
        super().check()
        if self.batches < 1:
            raise ConfigError(f"method option batches must be >= 1, got {self.batches}")


def pivoted_qr(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pivots, |diag R|)`` of the column-pivoted QR of any A with A^T A = ``gram``."""
    w, v = np.linalg.eigh((gram + gram.T) / 2)
    b = np.sqrt(np.clip(w, 0, None))[:, None] * v.T
    r, piv = scipy.linalg.qr(b, mode="r", pivoting=True)
    return np.asarray(piv), np.abs(np.diag(r))


def interpolation_matrix(gram: np.ndarray, skeleton) -> np.ndarray:
    """T (k x C) minimising ||A - A[:, skeleton] T|| (A^T A = ``gram``)."""
    s = np.asarray(skeleton)
    return np.linalg.lstsq(gram[np.ix_(s, s)], gram[s, :], rcond=None)[0]


@register("id")
class InterpolativeDecomposition(NextLayerReconstruction):
    """Column-pivoted QR of each layer's activations picks the skeleton channels; the next conv's kept input
    weights absorb the interpolation matrix."""

    learns = True  # reads training images through the shared trainer's learn stage; trains nothing
    learn_trains = False
    Options = IDOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.grams: dict[str, np.ndarray] | None = None
        self.samples = 0
        self.images = 0

    # -- collecting --------------------------------------------------------------------------------
    def collect(self, model, loader, spec=None, *, world_size: int = 1) -> dict:
        """The Gram matrices of ReLU(gated module output) over the first ``batches`` batches of ``loader``
        (eval mode, no gradient); cached and returned ``{tensor name: (C, C) float64 array}``."""
        from ..models.registry import describe
        from ..pruning.gates import GatedModel

        net = model.net if isinstance(model, GatedModel) else model
        if spec is None:
            spec = self.spec if self.spec is not None else (
                model.spec if isinstance(model, GatedModel) else describe(net))
        tensors = self.tensors(spec)

        def gram(x):
            a = x.double().transpose(0, 1).reshape(x.shape[1], -1)  # C x (B H W)
            return a @ a.T

        sums, seen = feature_sums(net, tensors, loader, self.options.batches, gram, relu=True, world_size=world_size)
        if not seen:
            raise ConfigError(f"method {self.name} found no training images (the loader gave no batch)")
        self.grams = {t.name: sums[t.name].cpu().numpy() for t in tensors}
        self.images, self.samples = seen, seen * spec.tensor(tensors[0].name).area  # pixels of the first tensor
        return self.grams

    def setup(self, trainer):
        self.collect(trainer.model, trainer.train_loader, world_size=trainer.world_size)

    def should_stop(self, trainer):
        return self.grams is not None

    def state_dict(self):
        if self.grams is None:
            return {}
        return {"grams": {n: torch.from_numpy(np.asarray(g, dtype=np.float64)) for n, g in self.grams.items()},
                "images": self.images, "samples": self.samples}

    def load_state_dict(self, state):
        grams = state.get("grams")
        self.grams = None if grams is None else {n: g.double().numpy() for n, g in grams.items()}
        self.images, self.samples = int(state.get("images", 0)), int(state.get("samples", 0))

    def _gram(self, spec, name):
        if self.grams is None:
            raise ConfigError(f"method {self.name} reads activations of training images, which it does in the learn "
                              f"stage (it trains nothing there): add stages: {{learn: {{enabled: true}}}} to the "
                              f"config (--set stages.learn.enabled=true), or call collect(model, loader) first")
        if name not in self.grams or self.grams[name].shape[0] != spec.tensor(name).channels:
            raise ConfigError(f"method {self.name} has no activations for {name} of {spec.model}: they were "
                              f"collected on another network or other slots; collect this one again")
        return self.grams[name]

    # -- selection ---------------------------------------------------------------------------------
    def scores(self, model, spec):
        out = {}
        for t in self.tensors(spec):
            piv, r = pivoted_qr(self._gram(spec, t.name))
            s = np.empty(t.channels)
            s[piv] = r
            out[t.name] = s
        return normalized(out, self.options.normalize, eps=1e-300)

    def build(self, model, spec, widths):
        from ..pruning.structure import Structure

        alive = {}
        for t in self.tensors(spec):
            k = int(widths.get(t.name, t.channels))
            if k < t.channels:
                piv, _ = pivoted_qr(self._gram(spec, t.name))
                alive[t.name] = np.sort(piv[:k])
        s = Structure.full(spec, [t.name for t in self.tensors(spec)], model_kwargs=_kwargs(model))
        return s.with_alive(alive, spec)

    def select(self, model, spec, budget):
        structure, report = super().select(model, spec, budget)
        report.extra["scored_images"] = self.images
        return structure, report

    def next_weights(self, net, spec, structure, name, weight):
        skeleton = np.asarray(structure.alive[name])
        t = torch.from_numpy(interpolation_matrix(self._gram(spec, name), skeleton))  # k x C
        new = weight.clone()
        new[:, skeleton] = torch.einsum("oc...,sc->os...", weight, t.to(weight.dtype))
        return new
