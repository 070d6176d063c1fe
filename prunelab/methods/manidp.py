"""``manidp``: Manifold Regularized Dynamic Network Pruning (Tang et al., CVPR 2021; docs/decisions.md §1).

Dynamic: every input gets its own channel mask. One saliency predictor per masked layer (both convs
of every residual block: the ``mid`` and ``delta`` tensors) reads the conv's input h:

    pi(x) = min(ReLU(W2 ReLU(W1 GAP(h)) + b2), 1000),   W1: (C/q) x C_in without bias, b2 initialised to 1

(q = 1 below 80 channels, else 2), and the mask is ``m = pi * 1[pi >= theta_l]``: hard support, soft
values, the same in training and at test time (kept channels stay scaled by pi; no straight-through
estimator). The objective (methods' shared trainer adds the CE):

    L = CE + lambda' * sum_l mean_i w_i mean_c pi_c^l(x_i) + lambda_sim * sum_l mean_ij (R^l_ij - T^l_ij)^2

* complexity weight ``w_i = 1[CE_i < C] ((C - CE_i) / C)^gamma`` in [0, 1] (supplement §1: lambda(x_i) =
  lambda' w_i); CE_i is the current forward pass's per-sample CE; ``C = kappa x`` the previous epoch's
  mean training CE, and before epoch 0 one pass over the training set in eval mode. Detached by
  default; ``detach_complexity_weight: false`` follows the official code (M1);
* the similarity loss compares R^l = cos(z_i, z_j) of the pooled pre-mask features of the conv pi^l
  controls with T^l = cos(pi_i, pi_j) of the un-thresholded saliencies, over the whole batch (§1.4);
* thresholds: the remain rate ``r(e) = (1 + r*)/2 + (1 - r*)/2 cos(pi (e + 1) / E)`` falls to r* at the
  last epoch; at the end of epoch e >= 1, theta_l becomes the ceil(r(e) C_l)-th largest dataset-mean
  saliency of that epoch (so epochs 0 and 1 are unpruned); the update after the last epoch is not
  made, so evaluation uses the thresholds the last epoch trained with (M3).

Predictors take no weight decay. The result is a :class:`~prunelab.pruning.result.DynamicResult`: its cost
is a distribution over inputs (per-instance MACs, with the predictors' MACs reported beside them, M5).
The run directory gets compact arrays (``arrays/manidp_*.npy``): per epoch C and w_i (float16) of every
training instance, the pretrained network's per-instance CE, R and T on a fixed seeded batch of 128
test images at the start, middle and end, and for every test image and layer its kept-channel count
(int16) with its CE, correctness and label.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..counting import count
from ..errors import ConfigError
from ..hooks import ParamGroup
from ..pruning.gates import GatedModel, PerInstanceGate, attach_gates, strip_gates
from ..pruning.result import DynamicResult, SelectReport
from ..utils import mean_pairwise_jaccard
from . import register
from .base import Method
from .options import Literal, MethodOptions, dataclass, field

SIMILARITY_BATCH = 128  # test images on which R^l and T^l are logged (seeded, fixed)
JACCARD_SAMPLE = 500  # test images whose kept sets are compared pairwise every epoch (the first of the split)


class SaliencyPredictor(nn.Module):
    """GAP -> FC (no bias) -> ReLU -> FC (bias = 1) -> ReLU -> min(., 1000): one saliency per channel.

    ``init="zero"`` (default) starts the second FC at zero weights, so every saliency is exactly 1 and
    the pretrained network's function is unchanged at the start; ``"small"`` draws the second FC's
    weights from N(0, ``init_std``^2), so that the saliencies of different inputs differ from the first
    step and the rank thresholds do not land in a band of equal values (M12); ``"kaiming"`` draws both
    FCs Kaiming-normal as the official code does (M11 in docs/decisions.md: on a pretrained CIFAR ResNet
    that spread compounds through the eval-mode network and its outputs explode).
    """

    def __init__(self, c_in: int, c_out: int, init: str = "zero", init_std: float = 0.01):
        super().__init__()
        hidden = max(1, c_out // (1 if c_out < 80 else 2))
        self.fc1 = nn.Linear(c_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, c_out)
        nn.init.kaiming_normal_(self.fc1.weight)
        if init == "kaiming":
            nn.init.kaiming_normal_(self.fc2.weight)
        elif init == "small":
            nn.init.normal_(self.fc2.weight, std=init_std)
        else:
            nn.init.zeros_(self.fc2.weight)
        nn.init.ones_(self.fc2.bias)  # every channel starts with saliency about 1

    def forward(self, h):
        return torch.clamp(F.relu(self.fc2(F.relu(self.fc1(_pool_hw(h))))), max=1000.0)

    def macs(self) -> int:
        return self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features \
            + self.fc2.out_features


class ManiDPGate(PerInstanceGate):
    """A per-instance gate that also keeps what ManiDP's losses and statistics read: the pooled
    pre-mask feature (the descriptor of R^l), and, in training, the running sum of saliencies."""

    _transient = ("_conv_input", "last_saliency", "last_mask", "last_descriptor")

    def __init__(self, channels: int, predictor: nn.Module, relu_descriptor: bool):
        super().__init__(channels, predictor, threshold=-1e4)
        self.relu_descriptor = relu_descriptor
        self.keep_descriptor = True  # the method turns it off when nothing reads it (lambda_sim = 0)
        self.register_buffer("saliency_sum", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("saliency_count", torch.zeros((), dtype=torch.float64))
        # how often each channel was kept this epoch (the static-mask control picks the most kept ones)
        self.register_buffer("keep_sum", torch.zeros(channels, dtype=torch.float64))
        self.last_descriptor = None

    def forward(self, x, conv_input=None):
        if conv_input is None:
            raise RuntimeError("ManiDPGate needs the conv input; attach it with GatedModel")
        pi = self.predictor(conv_input)
        m = pi * (pi >= self.threshold).to(pi.dtype)
        self.last_saliency, self.last_mask = pi, m
        # conv_a's descriptor is taken after its ReLU (the mask sits before the block's ReLU, which
        # commutes with a non-negative mask: the block's ReLU then passes the masked map unchanged);
        # conv_b's before the residual addition. One fused pass: see MaskAndPool.
        pool = self.keep_descriptor
        out, desc = MaskAndPool.apply(x, m.to(x.dtype), self.relu_descriptor and pool, pool)
        self.last_descriptor = desc.float() if self.keep_descriptor else None
        if self.training:
            with torch.no_grad():
                self.saliency_sum += self.last_saliency.detach().double().sum(0)
                self.keep_sum += (m.detach() != 0).sum(0).double()
                self.saliency_count += self.last_saliency.shape[0]
        return out


def _pool_hw(a: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial dimensions of a (B, C, H, W) map, read in its own memory layout (a plain
    ``mean((2, 3))`` of a channels-last map is a strided reduction, several times slower on CPU)."""
    if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = a.shape
        return a.permute(0, 2, 3, 1).reshape(b, h * w, c).mean(1)
    return a.mean((2, 3))


def _sum_hw(a: torch.Tensor) -> torch.Tensor:
    return _pool_hw(a) * (a.shape[2] * a.shape[3])


class MaskAndPool(torch.autograd.Function):
    """``z = f(x) * m`` with ``f`` = ReLU (conv_a's gate) or the identity (conv_b's), and the pooled
    descriptor ``d = mean_hw f(x)`` that R^l reads, in one autograd node.

    Why: composed from ordinary ops, the descriptor's ReLU, its pooling and the mask make autograd keep
    two full-size gradients of ``x`` and add them, and the pooled gradient is expanded in the contiguous
    layout against channels-last activations; measured on ResNet-20 (1 CPU thread, batch 128) the step
    cost 1.73x a dense step. Here the backward is ``gx = (gz * m + gd / HW) * 1[f'(x)]`` and
    ``gm = sum_hw gz * f(x)``, each one pass in the activations' own layout. When ``f`` is the ReLU, the
    block's own ReLU after the gate sees a non-negative map and is the identity (``relu(x) m = relu(x m)``
    for ``m >= 0``)."""

    @staticmethod
    def forward(ctx, x, m, relu: bool, pool: bool):
        a = F.relu(x) if relu else x
        z = a * m[:, :, None, None]
        d = _pool_hw(a) if pool else a.new_zeros(())
        ctx.relu, ctx.pool, ctx.hw = relu, pool, x.shape[2] * x.shape[3]
        ctx.save_for_backward(a, m)
        return z, d

    @staticmethod
    def backward(ctx, gz, gd):
        a, m = ctx.saved_tensors
        gm = _sum_hw(gz * a) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            if ctx.pool and gd is not None:
                gx = torch.addcmul((gd / ctx.hw)[:, :, None, None], gz, m[:, :, None, None])
            else:
                gx = gz * m[:, :, None, None]
            if ctx.relu:
                gx = torch.ops.aten.threshold_backward(gx, a, 0)
        return gx, gm, None, None


def ramp_epochs(epochs: int, fraction: float) -> int:
    """E_r = max(2, round(fraction x E)): the epochs over which the remain rate falls to r* (M13)."""
    return min(epochs, max(2, round(fraction * epochs)))


def cumulative_sparsity_push(lambda_: float, lr: float, epochs: int, steps_per_epoch: int, channels: int,
                             momentum: float = 0.9, mean_weight: float = 0.5, schedule: str = "cosine") -> float:
    """How far the sparsity term alone moves one predictor bias b2_c over a whole run (M14):

        P = sum_t lr_t / (1 - mu) x lambda' x w_bar / C_l

    (d/db2_c of lambda' mean_i w_i mean_c pi_c is lambda' w_bar / C_l while pi_c > 0; SGD with momentum mu
    moves a parameter by lr / (1 - mu) per unit of steady gradient). ``schedule`` ``cosine`` (no warm-up)
    sums lr_t to lr x steps / 2, ``constant`` to lr x steps. The official recipe (ResNet-56, 400 epochs,
    lr 0.05, lambda' 5e-3, batch 128 on CIFAR-10's 50,000 images) gives 1.6-6.2 for C_l = 64-16 at w_bar 0.5.
    """
    steps = epochs * steps_per_epoch
    total_lr = lr * steps * (0.5 if schedule == "cosine" else 1.0)
    return total_lr / (1 - momentum) * lambda_ * mean_weight / channels


def remain_rate(epoch: int, epochs: int, target: float) -> float:
    """r(e) = (1 + r*)/2 + (1 - r*)/2 cos(pi (e + 1) / E): from about 1 down to r* at e = E - 1."""
    return (1 + target) / 2 + (1 - target) / 2 * math.cos(math.pi * (epoch + 1) / epochs)


def cosine_matrix(v: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of ``v`` (B x C); an all-zero row gives zeros (eps 1e-12)."""
    v = F.normalize(v.float(), dim=1, eps=1e-12)
    return v @ v.t()


def similarity_loss(descriptor: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """(1/B^2) sum_ij (R_ij - T_ij)^2 with R from the pooled features and T from the saliencies (§1.4)."""
    return (cosine_matrix(descriptor) - cosine_matrix(saliency)).pow(2).mean()


def summed_similarity_loss(descriptors: list, saliencies: list) -> torch.Tensor:
    """sum_l similarity_loss(descriptor_l, saliency_l), with the layers of equal width stacked into one
    batched matrix product (3 groups instead of 18 layers on ResNet-20: the per-layer small ops were a
    measurable share of a CPU training step). Equal to the per-layer sum up to float rounding."""
    groups: dict = {}
    for d, s in zip(descriptors, saliencies):
        groups.setdefault((d.shape[1], s.shape[1]), ([], []))
        groups[(d.shape[1], s.shape[1])][0].append(d)
        groups[(d.shape[1], s.shape[1])][1].append(s)
    total = 0.0
    for ds, ss in groups.values():
        d = F.normalize(torch.stack(ds).float(), dim=2, eps=1e-12)
        s = F.normalize(torch.stack(ss).float(), dim=2, eps=1e-12)
        total = total + (torch.bmm(d, d.transpose(1, 2)) - torch.bmm(s, s.transpose(1, 2))).pow(2).mean((1, 2)).sum()
    return total


def complexity_weight(ce: torch.Tensor, c: float, exponent: float = 1.0) -> torch.Tensor:
    """w_i = 1[CE_i < C] ((C - CE_i) / C)^gamma: 1 for an input the network finds easy, 0 for a hard one."""
    rel = ((c - ce) / c).clamp(min=0.0)
    return torch.where(ce < c, rel.pow(exponent), torch.zeros_like(ce))


@dataclass
class ManiDPOptions(MethodOptions):
    """ManiDP's options (defaults: the official ResNet-56 README, docs/decisions.md §1.7).

    ``lambda`` (lambda'): weight of the sparsity term; ``lambda_sim``: weight of the similarity loss (0
    switches it off); ``remain``: the final remain rate r*; ``kappa``: C = kappa x mean CE of the
    previous epoch; ``complexity_exponent`` (gamma, M8); ``detach_complexity_weight`` (M1);
    ``predictor_init``: ``zero``, ``small`` (N(0, ``predictor_init_std``^2) second FC, M12) or the official
    ``kaiming`` (M11); ``ramp``: the fraction of the epochs over which the remain rate falls to r* (1: the
    official schedule, thresholds updated until the second-to-last epoch; below 1 the thresholds are
    then held fixed for the remaining epochs, M13).
    """

    lambda_: float = field(default=5e-3, metadata={"key": "lambda"})
    lambda_sim: float = 1.0
    remain: float = 0.6
    kappa: float = 0.5
    complexity_exponent: float = 1.0
    detach_complexity_weight: bool = True
    predictor_init: Literal["zero", "small", "kaiming"] = "zero"
    predictor_init_std: float = 0.01
    ramp: float = 1.0

    def check(self):
        super().check()
        if self.lambda_ < 0 or self.lambda_sim < 0:
            raise ConfigError("manidp needs lambda >= 0 and lambda_sim >= 0")
        if not 0 < self.remain <= 1:
            raise ConfigError(f"manidp remain (r*) must be in (0, 1], got {self.remain}")
        if self.kappa <= 0 or self.complexity_exponent <= 0:
            raise ConfigError("manidp needs kappa > 0 and complexity_exponent > 0")
        if not 0 < self.ramp <= 1:
            raise ConfigError(f"manidp ramp (the fraction of epochs over which the remain rate falls to r*) must be "
                              f"in (0, 1], got {self.ramp}")
        if not self.predictor_init_std > 0:
            raise ConfigError(f"manidp predictor_init_std must be > 0, got {self.predictor_init_std}")


@register("manidp")
class ManifoldDynamicPruning(Method):
    learns = True
    Options = ManiDPOptions
    result_kind = "dynamic"
    budget_tolerance = None  # the remain-rate schedule sets the cost, not a budget solver
    needs_budget = False
    wants_eval_batches = True

    def __init__(self, **options):
        super().__init__(**options)
        self.c = None  # the adaptive C (None: not yet measured)
        self.log: list[dict] = []
        self.weights: list[np.ndarray] = []  # w_i per epoch, by training-set index
        self.reference_ce = None  # the pretrained network's CE of every training image
        self.similarity: dict = {}  # "start"/"middle"/"end" -> {layer: (R, T)}
        self._ce_sum, self._ce_count = None, 0  # this epoch's training CE (sum on the device, count)
        self._w = None  # this epoch's w_i by training-set index (float16 tensor, NaN where not yet seen)
        self._test = None
        self._eval: list = []  # per-instance statistics of the epoch's test evaluation
        self._near = None  # [pruned, pruned within 10 % of theta, kept, kept within 10 %] of that evaluation

    # -- gates -------------------------------------------------------------------------------------
    def slots(self, spec):
        if self.options.slots:
            return tuple(self.options.slots)
        if {"mid", "delta"} <= set(spec.slots()):
            return ("mid", "delta")  # both convs of every block (§1.1)
        return super().slots(spec)

    def attach(self, net):
        from ..models.registry import describe

        spec = describe(net)
        # the predictor reads the input of the conv that produces the tensor (t.conv); a depthwise conv that
        # also writes the tensor (MobileNetV2) has the tensor's own width as input, not the producer's
        conv_in = {op.name: op.in_channels for op in spec.ops}
        init, std = self.options.predictor_init, self.options.predictor_init_std
        return attach_gates(net, lambda t: ManiDPGate(t.channels, SaliencyPredictor(conv_in[t.conv], t.channels, init,
                                                                                    std),
                                                      relu_descriptor=t.slot != "delta"), self.slots(spec))

    def predictor_macs(self, model: GatedModel) -> int:
        """MACs of all saliency predictors for one input (GAP additions not counted)."""
        return int(sum(g.predictor.macs() for _, g in model.items()))

    def param_groups(self, trainer):
        params = [p for _, g in trainer.model.items() for p in g.predictor.parameters()]
        o = trainer.optim_cfg
        # the predictors follow the weights' optimiser and schedule, without weight decay (§1.7)
        return [ParamGroup("predictors", params, optimizer=o.name, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           betas=tuple(o.betas), weight_decay=0.0, schedule="main")]

    def divergence_hint(self) -> str:
        return f"method.lambda={self.options.lambda_:g} or method.lambda_sim={self.options.lambda_sim:g}"

    # -- the start of training: C, the reference CE, R/T at the start -----------------------------
    @torch.no_grad()
    def _initial_pass(self, trainer):
        model = trainer.model
        was = model.training
        model.eval()
        total, n = 0.0, 0
        loader = trainer.train_loader
        for x, y, _ in loader.batches(0):  # training augmentation, eval mode, unpruned (theta = -1e4)
            ce = F.cross_entropy(model(x).float(), y, reduction="none")
            total, n = total + float(ce.sum()), n + len(y)
        self.c = self.options.kappa * total / max(n, 1)
        if hasattr(loader, "images"):
            self.reference_ce = self._reference_ce(model, loader)
        model.train(was)
        self._log_similarity(trainer, "start")

    @torch.no_grad()
    def _reference_ce(self, model, loader) -> np.ndarray:
        """The pretrained network without gates, on un-augmented training images: the complexity
        reference, independent of lambda (one value per training-set index)."""
        bare = strip_gates(copy.deepcopy(model.net)).eval()
        size = int(loader.indices.max()) + 1 if len(loader.indices) else 0
        ref = np.full(size, np.nan, dtype=np.float32)
        for i in range(0, loader.num_samples, 1000):
            rows = slice(i, i + 1000)
            x = loader.normalize(loader.images[rows])
            ce = F.cross_entropy(bare(x).float(), loader.labels[rows], reduction="none")
            ref[loader.indices[rows].cpu().numpy()] = ce.cpu().numpy()
        return ref

    def _similarity_batch(self, trainer):
        test = trainer.eval_loaders.get("test")
        if test is None or not hasattr(test, "images"):
            return None
        if self._test is None:
            g = torch.Generator().manual_seed(0)
            rows = torch.randperm(test.num_samples, generator=g)[:SIMILARITY_BATCH].to(test.images.device)
            y = test.labels[rows]
            order = torch.argsort(y.cpu() * test.num_samples + torch.arange(len(y)))  # sorted by class
            rows = rows[order.to(rows.device)]
            self._test = (test.normalize(test.images[rows]), test.labels[rows].cpu().numpy(),
                          test.indices[rows].cpu().numpy())
        return self._test

    @torch.no_grad()
    def _log_similarity(self, trainer, when: str):
        batch = self._similarity_batch(trainer)
        if batch is None:
            return
        model = trainer.model
        was = model.training
        model.eval()
        self._keep_descriptors(model, True)
        model(batch[0])
        self._keep_descriptors(model, self.options.lambda_sim > 0)
        self.similarity[when] = {n: (cosine_matrix(g.last_descriptor).cpu().numpy().astype(np.float32),
                                     cosine_matrix(g.last_saliency).cpu().numpy().astype(np.float32))
                                 for n, g in model.items()}
        model.train(was)
        if trainer.run is not None:
            names = list(self.similarity[when])
            trainer.run.save_array(f"manidp_similarity_{when}", np.stack(
                [np.stack(self.similarity[when][n]) for n in names]))  # (layers, 2 [R, T], B, B)
            trainer.run.save_array("manidp_similarity_labels", batch[1])
            trainer.run.save_array("manidp_similarity_indices", batch[2])

    # -- training ----------------------------------------------------------------------------------
    def setup(self, trainer):
        self._epochs = trainer.cfg.epochs
        self._keep_descriptors(trainer.model, self.options.lambda_sim > 0)

    @staticmethod
    def _keep_descriptors(model, keep: bool) -> None:
        for _, g in model.items():
            g.keep_descriptor = keep

    def before_forward(self, trainer, batch):
        if self.c is None:
            self._initial_pass(trainer)
        if self._w is None and self.reference_ce is not None:
            self._w = torch.full((len(self.reference_ce),), float("nan"), dtype=torch.float16)

    def loss_terms(self, trainer, batch):
        o = self.options
        ce = batch.ce_per_sample
        w = complexity_weight(ce.detach() if o.detach_complexity_weight else ce, self.c, o.complexity_exponent)
        gates = [g for _, g in trainer.model.items()]
        sparsity = sum((w * g.last_saliency.mean(1)).mean() for g in gates)
        terms = {"sparsity": o.lambda_ * sparsity}
        if o.lambda_sim > 0:
            terms["similarity"] = o.lambda_sim * summed_similarity_loss([g.last_descriptor for g in gates],
                                                                        [g.last_saliency for g in gates])
        with torch.no_grad():  # kept on the device: no host sync in the training step
            if self._ce_sum is None or self._ce_sum.device != ce.device:
                self._ce_sum = torch.zeros((), dtype=torch.float64, device=ce.device) + (
                    0.0 if self._ce_sum is None else float(self._ce_sum))
            self._ce_sum += ce.detach().sum().double()
            self._ce_count += len(ce)
            if self._w is not None:
                if self._w.device != w.device:
                    self._w = self._w.to(w.device)
                self._w[batch.idx] = w.detach().to(torch.float16)
        return terms

    # -- evaluation statistics ---------------------------------------------------------------------
    def eval_batch(self, trainer, split, batch):
        if split != "test":
            return
        alive = torch.cat([g.alive_per_instance() for _, g in trainer.model.items()], 1).cpu().numpy()
        # how decisive the thresholds are: the share of pruned (kept) saliencies within 10 % below (above) it;
        # near 0 when saliencies are bimodal, large when channels at nearly full strength are cut by noise
        near = self._near if self._near is not None else torch.zeros(4, dtype=torch.float64)
        for _, g in trainer.model.items():
            theta = float(g.threshold)
            if theta > 0:
                pi = g.last_saliency.detach()
                pruned = pi < theta
                near += torch.tensor([float(pruned.sum()), float((pruned & (pi >= 0.9 * theta)).sum()),
                                      float((~pruned).sum()), float((~pruned & (pi < 1.1 * theta)).sum())],
                                     dtype=torch.float64)
        self._near = near
        kept = np.stack([g.alive_per_instance().sum(1).cpu().numpy() for _, g in trainer.model.items()], 1)
        self._eval.append((kept.astype(np.int16), batch.ce_per_sample.cpu().numpy().astype(np.float32),
                           (batch.logits.argmax(1) == batch.y).cpu().numpy(), batch.y.cpu().numpy(),
                           batch.idx.cpu().numpy(), np.packbits(alive, axis=1)))

    def set_mode(self, trainer, training):
        if training:  # a new training epoch: the last evaluation's statistics were consumed
            self._eval, self._near = [], None
        super().set_mode(trainer, training)

    def end_epoch(self, trainer, epoch):
        model = trainer.model
        spec = model.spec
        names = [n for n, _ in model.items()]
        rec = {"manidp_C": self.c, "remain_rate": None}
        if self._eval:
            kept = np.concatenate([e[0] for e in self._eval])
            widths = {n: kept[:, j] for j, n in enumerate(names)}
            macs = np.asarray(count(spec, widths=widths).macs, dtype=np.float64)
            rec["test_macs_mean"] = float(macs.mean())
            rec["test_macs_reduction"] = 1 - float(macs.mean()) / count(spec).macs
            rec["kept_ratio_mean"] = float(np.mean([kept[:, j].mean() / spec.tensor(n).channels
                                                    for j, n in enumerate(names)]))
            # how dynamic the masks are: the spread of per-image MACs, and the mean pairwise Jaccard
            # similarity of different images' kept sets (per layer, then averaged over layers)
            rec["test_macs_std"], rec["test_macs_min"], rec["test_macs_max"] = (
                float(macs.std()), float(macs.min()), float(macs.max()))
            packed = np.concatenate([e[5] for e in self._eval])
            width = sum(spec.tensor(n).channels for n in names)
            alive = np.unpackbits(packed[:JACCARD_SAMPLE], axis=1, count=width).astype(bool)
            bounds = np.cumsum([0] + [spec.tensor(n).channels for n in names])
            rec["jaccard_mean"] = float(np.mean([mean_pairwise_jaccard(alive[:, a:b])
                                                 for a, b in zip(bounds[:-1], bounds[1:])]))
            if self._near is not None and self._near[0] > 0:
                rec["pruned_near_threshold"] = float(self._near[1] / self._near[0])
                rec["kept_near_threshold"] = float(self._near[3] / max(float(self._near[2]), 1.0))
            if trainer.run is not None and epoch + 1 == self._epochs:
                trainer.run.save_array("manidp_test_kept", kept)
                # the last training epoch's per-channel keep frequency and mean saliency, layers concatenated
                # in gate order (the channel counts are the spec's)
                n = [g.saliency_count.clamp(min=1) for _, g in model.items()]
                trainer.run.save_array("manidp_train_keep_frequency", torch.cat(
                    [g.keep_sum / c for (_, g), c in zip(model.items(), n)]).float().cpu().numpy())
                trainer.run.save_array("manidp_train_saliency_mean", torch.cat(
                    [g.saliency_sum / c for (_, g), c in zip(model.items(), n)]).float().cpu().numpy())
                for k, name in ((1, "ce"), (2, "correct"), (3, "label"), (4, "index"), (5, "masks_packed")):
                    trainer.run.save_array(f"manidp_test_{name}", np.concatenate([e[k] for e in self._eval]))
        # the adaptive C of the next epoch: kappa x this epoch's mean training CE
        if self._ce_count:
            self.c = self.options.kappa * float(self._ce_sum) / self._ce_count
        self._ce_sum, self._ce_count = None, 0
        # thresholds for the next epoch (none after the last: evaluation keeps the trained ones)
        ramp = ramp_epochs(self._epochs, self.options.ramp)
        if 1 <= epoch < min(ramp, self._epochs - 1):  # then held fixed (M13)
            r = remain_rate(epoch, ramp, self.options.remain)
            rec["remain_rate"] = r
            for n, g in model.items():
                mu = g.saliency_sum / g.saliency_count.clamp(min=1)
                k = max(1, math.ceil(r * g.channels))
                g.threshold.fill_(float(torch.topk(mu, k).values[-1]))
        for _, g in model.items():
            g.saliency_sum.zero_()
            g.saliency_count.zero_()
            g.keep_sum.zero_()
        rec["thresholds"] = [float(g.threshold) for _, g in model.items()]
        if self._w is not None:
            self.weights.append(self._w.cpu().numpy().copy())
            self._w.fill_(float("nan"))
        if epoch + 1 == self._epochs // 2 or epoch + 1 == self._epochs:
            self._log_similarity(trainer, "end" if epoch + 1 == self._epochs else "middle")
        self.log.append({"epoch": epoch + 1, **rec})
        if trainer.run is not None:
            if self.weights:
                trainer.run.save_array("manidp_weights", np.stack(self.weights))  # (epochs, N) float16
            if self.reference_ce is not None:
                trainer.run.save_array("manidp_reference_ce", self.reference_ce)
        out = {k: v for k, v in rec.items() if k != "thresholds" and v is not None}
        out["threshold_mean"] = float(np.mean(rec["thresholds"]))
        return out

    def state_dict(self):
        return {"c": self.c, "log": self.log, "weights": [torch.from_numpy(w.astype(np.float32)) for w in self.weights],
                "reference_ce": None if self.reference_ce is None else torch.from_numpy(self.reference_ce),
                "epoch_ce": [0.0 if self._ce_sum is None else float(self._ce_sum), self._ce_count],
                "w": None if self._w is None else self._w.float().cpu(),
                "similarity": {k: {n: [torch.from_numpy(r), torch.from_numpy(t)] for n, (r, t) in v.items()}
                               for k, v in self.similarity.items()}}

    def load_state_dict(self, state):
        self.c = state.get("c")
        self.log = list(state.get("log", []))
        self.weights = [w.numpy().astype(np.float16) for w in state.get("weights", [])]
        ref = state.get("reference_ce")
        self.reference_ce = None if ref is None else ref.numpy()
        ce_sum, self._ce_count = state.get("epoch_ce", [0.0, 0])
        self._ce_sum = torch.tensor(float(ce_sum), dtype=torch.float64)
        w = state.get("w")
        self._w = None if w is None else w.to(torch.float16)
        self.similarity = {k: {n: (rt[0].numpy(), rt[1].numpy()) for n, rt in v.items()}
                           for k, v in state.get("similarity", {}).items()}

    # -- the result --------------------------------------------------------------------------------
    def finalize(self, model, spec, budget):
        names = [n for n, _ in model.items()]
        last = self.log[-1] if self.log else {}
        extra = {"remain_target": self.options.remain, "thresholds": dict(zip(names, last.get("thresholds", []))),
                 "predictor_macs": self.predictor_macs(model), "C": self.c,
                 "dense_macs": count(spec).macs}
        return DynamicResult(model, SelectReport("pi >= theta_l per input (dynamic)", "macs", None, None,
                                                 {n: spec.tensor(n).channels for n in names}, extra), self.config())


# -- real dynamic inference: prunelab.pruning.dynamic_inference (re-exported here, where users look for it)

from ..pruning.dynamic_inference import DynamicInference  # noqa: E402,F401
