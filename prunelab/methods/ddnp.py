"""``ddnp``: Disentangled Differentiable Network Pruning (Gao, Huang, Zhang, Huang, ECCV 2022;
supplement 001; docs/decisions.md §2, D1-D13).

Two small generators learn, against a **frozen** pretrained network (BN in eval mode, trained on an
un-augmented 5 % split of the training set), *which* channels of every pruned layer matter and *how
many* to keep:

* importance generator g_s (supplement Table A2, Eq. 1): fixed inputs x_s (L x 64, orthogonal), a
  weight-normalised GRU(64 -> 128) over the layer index, ReLU, per-layer weight-normalised heads
  FC_l(128 -> C_l) giving logits z^l (D1; ``generator_norm: layer`` and ``bidirectional: true`` give
  the official code's versions);
* width generator g_k (Table A3, Eq. 2): x_k (32) -> FC(32 -> 64) -> ReLU -> FC(64 -> L), both
  weight-normalised, k_l = sigmoid(kbar_l + b) with b = 3, so the search starts at k = 0.953.

Masks (training): one Gumbel sample g per channel; the ranking score s_c = sigmoid(z_c + g_c + b)
(``score_function``: ``abs`` |z|/max|z|, ``square`` z^2/max z^2, no noise); ranks r_c in descending
score (no gradient); the soft top-k profile over ranks, with K = round(k C), delta = k C - K and
half-width s = floor(0.05 C) clipped to the ends,

    t_r = 1 (r < K - s),  S(K - r + delta) (|r - K| <= s),  0 (r > K + s),
    S(x) = clip(-2 (x/2s)^3 + 1.5 (x/2s) + 0.5, 0, 1)          (s = 0: the hard top-K),

plus a floor of 0.025 in training; the mask m_c = t_{r_c} * sigmoid((z_c + g_c + b) / tau), tau = 0.4.
The profile's gradient to k is the mean of the upstream gradients over its C ranks (the paper's
k-gradient, not the smoothstep's derivative). Hard gates a_c = 1[sigmoid((z_c + g_c + b)/tau) >= 0.5]
pass the soft gate's gradient (straight-through). The EMA importance sbar <- 0.99 sbar + 0.01 s is a
registered buffer (D8).

Objective (supplement §C, paper Eq. 9):

    J = CE + lambda |log(R / p)| + rho sum_l log(1 + |abar_l - k_l + eps_l|),   eps_l ~ U(-0.02, 0.02)

R = sum_l F_l(c_l) / sum_l F_l(C_l) with c_l = (sum_c a_c + k_l C_l) / 2, counted by the package's
differentiable counter over the convs that read or write the pruned tensors, with 3 ops per BN/ReLU
output element (DDNP's resource convention: 126.59 M ops for ResNet-56); p is the *remaining* ratio
(Table A1 presets). abar_l = mean_c a_c is detached, so the alignment term only moves k (D4).

Evaluation and extraction: no noise, channels ranked by sbar, the top round(k_l C_l) kept (at least
``min_channels``). The eval-mode masked network equals the extracted one; the pipeline extracts the
generated result into a static network (:attr:`Method.extracts`) and fine-tunes that on the full
training set. A search that ends with |R - p| > 0.02 (too short, or lambda too weak) warns
(:class:`~prunelab.methods.base.OffBudgetWarning`) and records ``off_budget`` in its report.

Variants (supplement Fig. A1 d/e; ``variant``): ``fix_s`` (importance fixed to the L1 norm of each
channel's conv1 filter, data-free, D9: scaled to [-3, 3] over all layers together, its soft gates
sigma((s - mean)/0.7) feed terms 2 and 3, as the official im_static does; the CE is logged but not trained on),
``fix_k`` (every k_l = 0.5), ``channelwise`` (one free logit per channel and one per layer, D13);
``learnable_input`` (D12) and ``score_function`` are orthogonal options.
"""

from __future__ import annotations

import copy
import csv
import functools
import math
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from ..counting import count, ops_touching, soft_cost
from ..errors import ConfigError, suggest
from ..hooks import ParamGroup
from ..pruning.gates import Controller, GatedModel, GeneratedGate, attach_gates, strip_gates
from ..pruning.result import GeneratedResult, SelectReport
from . import register
from .base import Method, flag_off_budget
from .l1 import filter_l1
from .options import Literal, MethodOptions, dataclass, field

OFFSET = 3.0  # b: start from (nearly) the whole network, sigmoid(3) = 0.953 (supplement Eq. 2)
TEMPERATURE = 0.4  # tau of the importance gate (D3)
SOFT_RANGE = 0.05  # half-width of the soft top-k, as a fraction of C
FLOOR = 0.025  # added to the training profile
EMA = 0.99  # importance EMA rate
JITTER = 0.02  # eps_l of the alignment term
R_TOLERANCE = 0.02  # |R - p| within which the search reached p (the held-out selection's rule)
FIX_S_TEMPERATURE = 0.7  # the Fix-S gate sigmoid((score - mean) / 0.7) (official code)


@functools.lru_cache(maxsize=1)
def presets() -> dict[str, float]:
    """Supplement Table A1: p (remaining FLOPs / total FLOPs) per dataset and model, by preset name."""
    from ..published import path

    with open(path("ddnp_table_a1")) as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {r["preset"]: float(r["p"]) for r in rows}


# -- the soft top-k profile -----------------------------------------------------------------------


class _TopKProfile(torch.autograd.Function):
    """t (L, Cmax) over ranks from widths k (L,); backward: dJ/dk_l = mean over the C_l ranks of dJ/dt."""

    @staticmethod
    def forward(ctx, k, channels, soft_range: float, floor: float):
        c = channels.to(k.dtype)
        kc = k.detach() * c
        big_k = torch.round(kc)
        delta = kc - big_k
        s = torch.floor(soft_range * c + 1e-6)
        s = torch.minimum(s, torch.minimum(big_k, c - 1 - big_k)).clamp(min=0)
        r = torch.arange(int(channels.max()), device=k.device, dtype=k.dtype)[None, :]
        big_k, delta, s = big_k[:, None], delta[:, None], s[:, None]
        u = (big_k - r + delta) / (2 * s).clamp(min=1)
        smooth = (-2 * u.pow(3) + 1.5 * u + 0.5).clamp(0, 1)
        inside = (s > 0) & (r >= big_k - s) & (r <= big_k + s)
        t = torch.where(r < big_k - s, torch.ones_like(u), torch.where(inside, smooth, torch.zeros_like(u)))
        if floor:
            t = (t + floor).clamp(max=1.0)
        valid = r < c[:, None]
        ctx.save_for_backward(valid, c)
        return t * valid

    @staticmethod
    def backward(ctx, grad):
        valid, c = ctx.saved_tensors
        return (grad * valid).sum(1) / c, None, None, None


def topk_profile(k: torch.Tensor, channels: torch.Tensor, soft_range: float = SOFT_RANGE,
                 floor: float = 0.0) -> torch.Tensor:
    """The soft top-k profile t[l, r] of every layer over ranks r (zero beyond C_l) for widths k in
    (0, 1) (module docstring); the gradient to k_l is the mean of the upstream gradients over its ranks."""
    return _TopKProfile.apply(k, channels, soft_range, floor)


def ranks(score: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """rank[l, c]: place of channel c in the descending order of ``score[l]`` (ties: lower index first);
    padding positions (``valid`` False) rank last."""
    s = score.detach().masked_fill(~valid, float("-inf"))
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))


def straight_through(soft: torch.Tensor) -> torch.Tensor:
    """1[soft >= 0.5] in the forward pass, the gradient of ``soft`` in the backward pass."""
    return (soft >= 0.5).to(soft.dtype) - soft.detach() + soft


def gumbel_like(x: torch.Tensor) -> torch.Tensor:
    """One Gumbel(0, 1) sample per entry: -log(-log U) (mean 0.577)."""
    u = torch.rand_like(x).clamp_(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


# -- the generators -------------------------------------------------------------------------------


class _Heads(nn.Module):
    """Per-layer linear heads FC_l(H -> C_l) held as one padded (L, Cmax, H) tensor (one batched product
    instead of L small ones); with ``norm="weight"`` each output row is weight-normalised, g * v / |v|."""

    def __init__(self, hidden: int, channels: list[int], weight_norm_rows: bool):
        super().__init__()
        n, cmax = len(channels), max(channels)
        self.v = nn.Parameter(torch.empty(n, cmax, hidden).uniform_(-1 / math.sqrt(hidden), 1 / math.sqrt(hidden)))
        self.weight_norm_rows = weight_norm_rows
        if weight_norm_rows:
            self.g = nn.Parameter(self.v.detach().norm(dim=2).clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (L, H) -> (L, Cmax)
        w = self.v
        if self.weight_norm_rows:
            w = self.g[..., None] * w / w.norm(dim=2, keepdim=True).clamp(min=1e-12)
        return torch.einsum("lch,lh->lc", w, h)


def _input(shape, learnable: bool, kind: str):
    x = torch.empty(*shape)
    nn.init.orthogonal_(x) if kind == "orthogonal" else nn.init.normal_(x)
    return nn.Parameter(x) if learnable else x


class ImportanceGenerator(nn.Module):
    """g_s (supplement Table A2): inputs x_s (L x 64), a GRU over the layer index, ReLU, per-layer heads
    FC_l(hidden -> C_l); outputs the logits z (L, Cmax), padded with zeros beyond C_l.

    ``norm="weight"`` (D1, the supplement): weight normalisation on the GRU's and the heads' weight
    matrices; ``"layer"``: a plain GRU followed by LayerNorm (the official code). ``bidirectional``:
    the released script's GRU (two directions, 2 x hidden features into the heads).
    """

    def __init__(self, channels: list[int], input_dim: int = 64, hidden: int = 128, norm: str = "weight",
                 bidirectional: bool = False, learnable_input: bool = False):
        super().__init__()
        x = _input((len(channels), input_dim), learnable_input, "orthogonal")
        if isinstance(x, nn.Parameter):
            self.inputs = x
        else:
            self.register_buffer("inputs", x)
        self.gru = nn.GRU(input_dim, hidden, batch_first=True, bidirectional=bidirectional)
        features = hidden * (2 if bidirectional else 1)
        if norm == "weight":
            for name, _ in list(self.gru.named_parameters()):
                if name.startswith("weight"):
                    weight_norm(self.gru, name, dim=0)
            self.norm = nn.Identity()
        else:
            self.norm = nn.LayerNorm(features)
        self.heads = _Heads(features, channels, weight_norm_rows=norm == "weight")

    def forward(self) -> torch.Tensor:
        with warnings.catch_warnings():
            # weight-normalised GRU weights are recomputed every call, so cuDNN never sees them in one
            # flat buffer; its per-call warning about it says nothing the user can act on
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            o, _ = self.gru(self.inputs[None])  # the layers are the sequence: (1, L, features)
        return self.heads(F.relu(self.norm(o[0])))


class WidthGenerator(nn.Module):
    """g_k (supplement Table A3): x_k (32) -> FC(32 -> 64) -> ReLU -> FC(64 -> L) -> kbar; k = sigmoid(kbar + b).

    ``norm="weight"``: both FCs weight-normalised (the supplement); ``"layer"``: bias-free FCs with a
    LayerNorm after the first (the official code's second version)."""

    def __init__(self, layers: int, input_dim: int = 32, hidden: int = 64, norm: str = "weight",
                 learnable_input: bool = False):
        super().__init__()
        x = _input((input_dim,), learnable_input, "normal")
        if isinstance(x, nn.Parameter):
            self.inputs = x
        else:
            self.register_buffer("inputs", x)
        bias = norm == "weight"
        self.fc1, self.fc2 = nn.Linear(input_dim, hidden, bias=bias), nn.Linear(hidden, layers, bias=bias)
        if norm == "weight":
            weight_norm(self.fc1, "weight", dim=0)
            weight_norm(self.fc2, "weight", dim=0)
            self.norm = nn.Identity()
        else:
            self.norm = nn.LayerNorm(hidden)

    def forward(self) -> torch.Tensor:
        return self.fc2(F.relu(self.norm(self.fc1(self.inputs))))


class ScalarImportance(nn.Module):
    """Channel-wise-ks, importance half: one free logit per channel (L x Cmax, padded)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(len(channels), max(channels)) * 0.01)

    def forward(self) -> torch.Tensor:
        return self.logits


class ScalarWidth(nn.Module):
    """Channel-wise-ks, width half: one free kbar per layer (k = sigmoid(kbar + b), starting at 0.953)."""

    def __init__(self, layers: int):
        super().__init__()
        self.kbar = nn.Parameter(torch.zeros(layers))

    def forward(self) -> torch.Tensor:
        return self.kbar


class DDNPController(Controller):
    """Writes the masks of every pruned layer before each forward pass of the gated network.

    Training: Gumbel-noised gates times the soft top-k profile (the module docstring); keeps what the
    losses read in ``last`` (k, the hard gates a, the soft widths). Evaluation: the hard top-K of the EMA
    importance (or of the fixed score), K = max(min_channels, round(k_l C_l)).
    """

    def __init__(self, names: list[str], channels: list[int], importance: nn.Module | None,
                 width: nn.Module | None, *, score_function: str = "sigmoid", fixed_k: float = 0.5,
                 min_channels: int = 1, use_prior: bool = False, fix_s_scaling: str = "global",
                 fix_s_gate: str = "soft"):
        super().__init__()
        self.fix_s_scaling, self.fix_s_gate = fix_s_scaling, fix_s_gate
        self.names, self.channel_list = list(names), list(channels)
        self.importance, self.width = importance, width
        self.score_function, self.fixed_k, self.min_channels = score_function, float(fixed_k), int(min_channels)
        self.use_prior = use_prior
        c = torch.tensor(channels)
        self.register_buffer("channels", c, persistent=False)
        self.register_buffer("valid", torch.arange(int(c.max()))[None, :] < c[:, None], persistent=False)
        self.register_buffer("ema", torch.zeros(len(channels), int(c.max())))
        # Fix S: the fixed per-channel score; the feature-norm prior phi: mean post-ReLU energy (D2)
        self.register_buffer("fixed_score", torch.zeros(len(channels), int(c.max())))
        self.register_buffer("prior", torch.ones(len(channels), int(c.max())))
        self.last: dict = {}

    def __getstate__(self):  # the last step's tensors are in the autograd graph: never copied
        state = self.__dict__.copy()
        state["last"] = {}
        return state

    # -- what the generators say ---------------------------------------------------------------------
    def k(self) -> torch.Tensor:
        """The widths k_l in (0, 1), shape (L,)."""
        if self.width is None:
            return torch.full((len(self.names),), self.fixed_k, device=self.ema.device)
        # float32 even under autocast: K = round(k C) must not move with bf16 rounding
        return torch.sigmoid(self.width().float() + OFFSET)

    def kept(self, k: torch.Tensor | None = None) -> torch.Tensor:
        """Channels kept per layer at evaluation: max(min_channels, round(k_l C_l)), shape (L,)."""
        k = self.k().detach() if k is None else k.detach()
        return torch.round(k * self.channels).clamp(min=self.min_channels).minimum(self.channels).long()

    def _normalised(self, v: torch.Tensor) -> torch.Tensor:
        m = v.masked_fill(~self.valid, 0).amax(1, keepdim=True).clamp(min=1e-12)
        return v / m

    def _fixed_gate(self) -> torch.Tensor:
        """sigma((s - mean) / 0.7) of the fixed scores; the mean over every layer's channels (``global``,
        the official im_static) or over the layer's own (``per_layer``)."""
        s = self.fixed_score
        if self.fix_s_scaling == "global":
            mean = (s * self.valid).sum() / self.channels.sum()
        else:
            mean = (s * self.valid).sum(1, keepdim=True) / self.channels[:, None]
        return torch.sigmoid((s - mean) / FIX_S_TEMPERATURE)

    def set_fixed_scores(self, scores: list[torch.Tensor]) -> None:
        """Fix S: the per-layer raw scores, min-max scaled to [-3, 3] over all layers together (``global``,
        the official im_static) or layer by layer (``per_layer``). Ranks within a layer are the same
        either way; the gates sigma((s - mean)/0.7) that terms 2 and 3 read are not."""
        with torch.no_grad():
            if self.fix_s_scaling == "global":
                flat = _scaled(torch.cat([v.float().flatten() for v in scores]))
                scores = list(torch.split(flat, [len(v) for v in scores]))
            else:
                scores = [_scaled(v.float()) for v in scores]
            for j, v in enumerate(scores):
                self.fixed_score[j, : len(v)] = v

    def eval_masks(self) -> torch.Tensor:
        """0/1 masks (L, Cmax) of the extracted network."""
        score = self.fixed_score if self.importance is None else self.ema
        return ((ranks(score, self.valid) < self.kept()[:, None]) & self.valid).float()

    def forward(self, gated: GatedModel, x: torch.Tensor) -> None:
        if not self.training:
            masks = self.eval_masks()
            for j, n in enumerate(self.names):
                gated.gate(n).set(eval_value=masks[j, : self.channel_list[j]])
            return
        k = self.k()
        if self.importance is None:  # Fix S: ranked by the fixed score, no gate (official code)
            score, gate_soft = self.fixed_score, self._fixed_gate()
            # the official code gives terms 2 and 3 the soft gates; "hard" thresholds them at 0.5
            a = gate_soft if self.fix_s_gate == "soft" else (gate_soft >= 0.5).float()
            gate = torch.ones_like(score)
        else:
            z = self.importance().float()
            noisy = z + gumbel_like(z) + OFFSET
            gate_soft = torch.sigmoid(noisy / TEMPERATURE)
            a = straight_through(gate_soft)
            gate = gate_soft
            if self.score_function == "sigmoid":
                score = torch.sigmoid(noisy)
            elif self.score_function == "abs":
                score = self._normalised(z.abs())
            else:
                score = self._normalised(z.pow(2))
            if self.use_prior:  # the released code's three-term ranking (D2)
                score = 0.5 * score + 0.5 * self._normalised(self.prior)
        score = score.detach()
        with torch.no_grad():
            self.ema.mul_(EMA).add_((1 - EMA) * score * self.valid)
        t = topk_profile(k, self.channels, SOFT_RANGE, FLOOR)
        masks = t.gather(1, ranks(score, self.valid)) * gate
        for j, n in enumerate(self.names):
            gated.gate(n).set(train_value=masks[j, : self.channel_list[j]])
        a = a * self.valid
        self.last = {"k": k, "a": a, "abar": a.detach().sum(1) / self.channels}


# -- options and the method -----------------------------------------------------------------------


@dataclass
class DDNPOptions(MethodOptions):
    """DDNP's options (defaults: the supplement and the official CIFAR-10 ResNet-56 script, docs/decisions.md §2).

    ``p``: the remaining ratio of the pruned blocks' ops (Table A1); ``preset``: a Table A1 row by name
    (``cifar10-resnet56`` = 0.48, ...); neither: a budget's keep ratio, else 0.48 (D6). ``lambda``: weight
    of |log(R/p)| (D5); ``rho``: weight of the alignment term; ``alignment_distance``: ``log`` log(1+|.|)
    or ``mae`` |.| (D4). ``variant``: ``full``, ``fix_s``, ``fix_k``, ``channelwise`` (supplement Fig. A1 d);
    ``fix_s_score``: ``l1`` (data-free) or ``feature_norm`` (D9); ``fix_s_scaling``: the Fix-S scores min-max
    scaled to [-3, 3] over all layers (``global``, official) or per layer; ``fix_s_gate``: terms 2 and 3 read the
    soft gates sigma((s - mean)/0.7) (``soft``, official) or their 0.5 threshold (``hard``, D9);
    ``fix_k_value``: the fixed width;
    ``learnable_input`` (D12); ``score_function``: ``sigmoid``, ``abs`` (|s|), ``square`` (s^2);
    ``generator_norm``, ``bidirectional`` (D1); ``importance_prior`` (D2); ``objective``: ``three_term``
    (CE + resource with c_l = (sum a + k C)/2 + alignment), ``two_term`` (CE + resource with c_l = k C, the
    official code's mode without hard gates) or ``auto`` (two terms for Channel-wise-ks, as the official
    code runs it, three otherwise; D13); ``gate_lr``/``gate_weight_decay``: AdamW of
    g_s (constant lr); ``width_lr``: AdamW of g_k (cosine to 0); ``scalar_width_lr_factor``: Channel-wise-ks
    trains its per-layer k scalars at this multiple of ``width_lr`` (the official code: 1e-2 against the
    generator's 1e-3; D13); ``selection``: ``last`` epoch (D7) or
    the best ``heldout`` accuracy in the second half of the search among epochs whose eval R is within
    0.02 of p.
    """

    p: float | None = None
    preset: str | None = None
    lambda_: float = field(default=4.0, metadata={"key": "lambda"})
    rho: float = 1.0
    alignment_distance: Literal["log", "mae"] = "log"
    variant: Literal["full", "fix_s", "fix_k", "channelwise"] = "full"
    fix_s_score: Literal["l1", "feature_norm"] = "l1"
    fix_s_scaling: Literal["global", "per_layer"] = "global"
    fix_s_gate: Literal["soft", "hard"] = "soft"
    fix_k_value: float = 0.5
    learnable_input: bool = False
    score_function: Literal["sigmoid", "abs", "square"] = "sigmoid"
    generator_norm: Literal["weight", "layer"] = "weight"
    bidirectional: bool = False
    importance_prior: Literal["none", "feature_norm"] = "none"
    objective: Literal["auto", "three_term", "two_term"] = "auto"
    gate_lr: float = 1e-3
    gate_weight_decay: float = 1e-4
    width_lr: float = 1e-3
    scalar_width_lr_factor: float = 10.0
    selection: Literal["last", "heldout"] = "last"

    def check(self):
        super().check()
        if self.p is not None and not 0 < self.p <= 1:
            raise ConfigError(f"ddnp p (the remaining ratio) must be in (0, 1], got {self.p}")
        if self.preset is not None:
            table = presets()
            if self.preset not in table:
                raise ConfigError(f"ddnp has no preset {self.preset!r}.{suggest(self.preset, table)} Presets "
                                  f"(supplement Table A1): {', '.join(sorted(table))}")
            if self.p is not None and abs(self.p - table[self.preset]) > 1e-12:
                raise ConfigError(f"ddnp p={self.p} contradicts preset {self.preset!r} (p={table[self.preset]}); "
                                  f"give one of them")
        if self.lambda_ < 0 or self.rho < 0:
            raise ConfigError("ddnp needs lambda >= 0 and rho >= 0")
        if not 0 < self.fix_k_value <= 1:
            raise ConfigError(f"ddnp fix_k_value must be in (0, 1], got {self.fix_k_value}")
        if min(self.gate_lr, self.width_lr, self.scalar_width_lr_factor) <= 0 or self.gate_weight_decay < 0:
            raise ConfigError("ddnp needs gate_lr > 0, width_lr > 0, scalar_width_lr_factor > 0 and "
                              "gate_weight_decay >= 0")


@register("ddnp")
class DisentangledPruning(Method):
    learns = True
    Options = DDNPOptions
    result_kind = "generated"
    extracts = True  # the pipeline fine-tunes the extracted static network, not the generators
    budget_tolerance = None  # the resource loss reaches p by training (within R_TOLERANCE, else a warning)
    needs_budget = False
    honours_groups = False  # the generators give every pruned tensor its own widths and channels

    def folds_gates(self):
        return True  # extraction compacts the gated network (GeneratedResult.to_static)

    def __init__(self, **options):
        super().__init__(**options)
        self.p: float | None = None
        self.log: list[dict] = []
        self.best: dict | None = None  # the held-out selection's snapshot (selection: heldout)
        self._sums, self._steps = None, 0  # this epoch's sums of R (soft), abar and k on the device; steps
        self._prior_done = False

    # -- set-up --------------------------------------------------------------------------------------
    def target(self, budget=None) -> float:
        """p: the option, else the preset, else a budget's keep ratio, else 0.48 (D6)."""
        o = self.options
        if o.p is not None:
            p = o.p
        elif o.preset is not None:
            p = presets()[o.preset]
        elif budget is not None:
            p = budget.keep
        else:
            p = presets()["cifar10-resnet56"]
        if budget is not None and abs(budget.keep - p) > 1e-9:
            raise ConfigError(f"ddnp's target p={p} and the run's budget (keep {budget.keep}) disagree; DDNP reaches p "
                              f"by training (method.p or method.preset): drop budget: or make them equal")
        return float(p)

    def prepare(self, spec, budget):
        super().prepare(spec, budget)
        if budget is not None and budget.metric not in ("macs", "flops"):
            raise ConfigError(f"ddnp prunes to a FLOPs ratio p; a budget must be macs or flops, got {budget.metric!r}")
        self.p = self.target(budget)
        names = [t.name for t in self.tensors(spec)]
        self._names = names
        self._ops = ops_touching(spec, names)
        self._dense_ops = float(count(spec, count_bn_relu=True, only_ops=self._ops).macs)

    def attach(self, net):
        from ..models.registry import describe

        o = self.options
        spec = describe(net)
        tensors = self.tensors(spec)
        names, channels = [t.name for t in tensors], [t.channels for t in tensors]
        importance = width = None
        if o.variant in ("full", "fix_k"):
            importance = ImportanceGenerator(channels, norm=o.generator_norm, bidirectional=o.bidirectional,
                                             learnable_input=o.learnable_input)
        elif o.variant == "channelwise":
            importance = ScalarImportance(channels)
        if o.variant in ("full", "fix_s"):
            width = WidthGenerator(len(names), norm=o.generator_norm, learnable_input=o.learnable_input)
        elif o.variant == "channelwise":
            width = ScalarWidth(len(names))
        controller = DDNPController(names, channels, importance, width, score_function=o.score_function,
                                    fixed_k=o.fix_k_value, min_channels=o.min_channels,
                                    use_prior=o.importance_prior == "feature_norm",
                                    fix_s_scaling=o.fix_s_scaling, fix_s_gate=o.fix_s_gate)
        if o.variant == "fix_s" and o.fix_s_score == "l1":
            with torch.no_grad():  # data-free: the L1 norm of each channel's conv1 filter, scaled to [-3, 3]
                controller.set_fixed_scores([filter_l1(net.get_submodule(t.conv)) for t in tensors])
        return attach_gates(net, lambda t: GeneratedGate(t.channels), names=names, controller=controller)

    def _feature_norms(self, trainer) -> None:
        """phi_c = mean over images of the squared post-ReLU output of the pruned conv (over H x W) of the
        pretrained network, on the un-augmented images of the trainer's training split (the search split;
        the official code averages over the whole training set). Written into the controller."""
        model = trainer.model
        bare = strip_gates(copy.deepcopy(model.net)).eval()
        spec = model.spec
        sums = {n: 0.0 for n in self._names}
        hooks = [bare.get_submodule(spec.tensor(n).module).register_forward_hook(
            lambda m, i, out, n=n: sums.__setitem__(n, sums[n] + F.relu(out).float().pow(2).sum((2, 3)).sum(0)))
            for n in self._names]
        loader, seen = trainer.train_loader, 0
        with torch.no_grad():
            if hasattr(loader, "images"):
                for i in range(0, loader.num_samples, 500):
                    bare(loader.normalize(loader.images[i:i + 500]))
                seen = loader.num_samples
            else:
                for x, *_ in loader:
                    bare(x)
                    seen += len(x)
        for h in hooks:
            h.remove()
        ctrl = model.controller
        phis = [sums[n] / max(seen, 1) for n in self._names]
        for j, phi in enumerate(phis):
            ctrl.prior[j, : len(phi)] = phi
        if self.options.variant == "fix_s" and self.options.fix_s_score == "feature_norm":
            ctrl.set_fixed_scores(phis)

    # -- training ------------------------------------------------------------------------------------
    def setup(self, trainer):
        for p in trainer.model.net.parameters():  # the pretrained network stays frozen (§2.4)
            p.requires_grad_(False)
        self._sums, self._steps = None, 0

    def set_mode(self, trainer, training):
        trainer.model.train(training)
        if training:
            trainer.model.net.eval()  # BN in eval mode during the search; gates and generators train

    def param_groups(self, trainer):
        ctrl, o = trainer.model.controller, self.options
        groups = []
        if ctrl.importance is not None:
            groups.append(ParamGroup("importance", list(ctrl.importance.parameters()), optimizer="adamw", lr=o.gate_lr,
                                     weight_decay=o.gate_weight_decay, schedule="constant"))
        if ctrl.width is not None:
            lr = o.width_lr * (o.scalar_width_lr_factor if isinstance(ctrl.width, ScalarWidth) else 1.0)
            groups.append(ParamGroup("width", list(ctrl.width.parameters()), optimizer="adamw", lr=lr,
                                     weight_decay=0.0, schedule="cosine"))
        return groups

    def divergence_hint(self) -> str:
        return f"method.lambda={self.options.lambda_:g} or method.gate_lr={self.options.gate_lr:g}"

    def before_forward(self, trainer, batch):
        o = self.options
        needs = o.importance_prior == "feature_norm" or (o.variant == "fix_s" and o.fix_s_score == "feature_norm")
        if needs and not self._prior_done:
            self._feature_norms(trainer)
            self._prior_done = True

    def resource_ratio(self, widths: dict) -> torch.Tensor:
        """R: the pruned blocks' ops at ``widths`` over their dense ops (DDNP's convention: convs reading or
        writing the pruned tensors, 3 ops per BN/ReLU output element), through the differentiable counter."""
        return soft_cost(self.spec, widths, "macs", count_bn_relu=True, only_ops=self._ops) / self._dense_ops

    def hard_ratio(self, kept) -> float:
        """R of integer widths (the extracted network), counted exactly."""
        widths = {n: int(w) for n, w in zip(self._names, kept)}
        return float(count(self.spec, widths=widths, count_bn_relu=True, only_ops=self._ops).macs) / self._dense_ops

    @property
    def objective(self) -> str:
        """``three_term`` or ``two_term`` (``auto``: two terms for Channel-wise-ks, three otherwise; D13)."""
        o = self.options
        if o.objective != "auto":
            return o.objective
        return "two_term" if o.variant == "channelwise" else "three_term"

    def loss_terms(self, trainer, batch):
        o, ctrl = self.options, trainer.model.controller
        last = ctrl.last
        k, a, abar = last["k"], last["a"], last["abar"]
        c = ctrl.channels.to(k.dtype)
        two = self.objective == "two_term"
        soft = k * c if two else 0.5 * (a.sum(1) + k * c)
        r = self.resource_ratio({n: soft[j] for j, n in enumerate(self._names)})
        terms = {"resource": o.lambda_ * torch.log(r / self.p).abs()}
        if not two:  # the alignment term belongs to the three-term objective
            gap = abar - k + (torch.rand_like(k) * 2 - 1) * JITTER
            dist = torch.log1p(gap.abs()) if o.alignment_distance == "log" else gap.abs()
            terms["alignment"] = o.rho * dist.sum()
        if o.variant == "fix_s":  # data is not used: the CE is logged, not trained on
            terms["ce"] = batch.ce_per_sample.mean().detach()
        with torch.no_grad():  # kept on the device: one host sync per epoch
            step = torch.cat([r.detach().reshape(1), abar, k.detach()]).float()
            self._sums = step.clone() if self._sums is None else self._sums.to(step.device) + step
            self._steps += 1
        return terms

    def end_epoch(self, trainer, epoch):
        ctrl = trainer.model.controller
        n_layers = len(self._names)
        rec = {"epoch": epoch + 1, "p": self.p}
        if self._sums is not None:
            mean = (self._sums / max(self._steps, 1)).cpu().tolist()
            rec["R_soft"], rec["abar"] = mean[0], mean[1:1 + n_layers]
        self._sums, self._steps = None, 0
        with torch.no_grad():
            kept = ctrl.kept().cpu().tolist()
            rec["k"] = ctrl.k().detach().cpu().tolist()
        rec["widths"] = kept
        rec["R_hard"] = self.hard_ratio(kept)
        for split in ("test", "val"):
            if split in trainer.last_eval:
                rec[f"{split}_acc"] = trainer.last_eval[split]["acc"]
        if (self.options.selection == "heldout" and "val_acc" in rec and epoch + 1 > trainer.cfg.epochs // 2
                and abs(rec["R_hard"] - self.p) <= R_TOLERANCE
                and (self.best is None or rec["val_acc"] > self.best["val_acc"])):
            self.best = {"epoch": epoch + 1, "val_acc": rec["val_acc"],
                         "controller": {k: v.detach().cpu().clone() for k, v in ctrl.state_dict().items()}}
        self.log.append(rec)
        return {"R_soft": rec.get("R_soft", float("nan")), "R_hard": rec["R_hard"], "p": self.p,
                "k_mean": float(np.mean(rec["k"])), "kept_ratio": float(np.sum(kept) / ctrl.channels.sum().item())}

    def state_dict(self):
        out = {"log": self.log, "prior_done": self._prior_done, "epoch_steps": self._steps}
        if self._sums is not None:  # the epoch in progress (a checkpoint taken mid-epoch resumes it exactly)
            out["epoch_sums"] = self._sums.detach().cpu().clone()
        if self.best is not None:
            out["best"] = self.best
        return out

    def load_state_dict(self, state):
        self.log = list(state.get("log", []))
        self._prior_done = bool(state.get("prior_done", False))
        self.best = state.get("best")
        self._steps = int(state.get("epoch_steps", 0))
        self._sums = state.get("epoch_sums")

    # -- the result ----------------------------------------------------------------------------------
    def finalize(self, model, spec, budget):
        if self.p is None:
            self.prepare(spec, budget)
        selected = "last epoch"
        if self.options.selection == "heldout":
            if self.best is not None:
                model.controller.load_state_dict(self.best["controller"])
                selected = f"epoch {self.best['epoch']} (best held-out accuracy {self.best['val_acc']:.4f}, |R - p| <= 0.02)"
            else:
                selected = "last epoch (no epoch of the second half met |R - p| <= 0.02 with a held-out accuracy)"
        ctrl = model.controller
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                kept = ctrl.kept().cpu().tolist()
                k = ctrl.k().cpu().tolist()
        finally:
            model.train(was)
        widths = dict(zip(self._names, kept))
        achieved = float(count(spec, widths=widths).macs)
        last = self.log[-1] if self.log else {}
        extra = {"p": self.p, "R_hard": self.hard_ratio(kept), "R_soft_last_epoch": last.get("R_soft"),
                 "k": k, "selection": selected, "variant": self.options.variant, "objective": self.objective,
                 "resource_convention": "pruned blocks' convs + 3 ops per BN/ReLU output element (DDNP's R)",
                 "dense_macs": float(count(spec).macs)}
        report = SelectReport("hard top-k of the EMA importance, widths round(k_l C_l)", "macs", None, achieved,
                              widths, extra)
        # a search too short (or lambda too weak) stops short of p, e.g. R = 0.95 against p = 0.5
        flag_off_budget(self.name, report, "R", extra["R_hard"], self.p, below=R_TOLERANCE / self.p,
                        above=R_TOLERANCE / self.p, hint="search longer (train.epochs) or raise method.lambda")
        return GeneratedResult(model, report, self.config())


def _scaled(v: torch.Tensor) -> torch.Tensor:
    """Min-max scaled to [-3, 3] (the official code's Fix-S score)."""
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo).clamp(min=1e-12) * 6 - 3
