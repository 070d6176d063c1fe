"""``ib``: the variational information bottleneck (Dai, Zhu, Guo, Wipf, ICML 2018), in BAR's comparison.

Sources: the paper ("Compressing Neural Networks using the Variational Information Bottleneck") and its
official code, ``zhuchen03/VIBNet`` (``ib_layers.py``, ``ib_vgg.py``, ``ib_vgg_train.py``, README; the
commit is not pinned: the files were read in a stored snapshot of the repository, the project's design
notes cite ``2ebc51c``), and BAR's supplement §3-§4 (schedule, initialisation). Decisions:
docs/decisions.md §5.2, L2 and L9-L16.

Gate (one per channel of every gated tensor, :class:`IBGate`, a :class:`GaussianGate`)::

    z = mu + sigma * eps,  eps ~ N(0, 1)      (training; one eps per channel per example, as the code)
    z = mu * 1[log_alpha < threshold]          (evaluation; the code's ``get_mask_weighted``)
    log_alpha = log sigma^2 - log(mu^2 + 1e-8)

Parameters mu and log sigma^2 (the code's ``post_z_logD``), initialised mu ~ N(1, 0.01^2),
log sigma^2 ~ N(-9, 0.01^2) (the code's ``init_mag=9, init_var=0.01``; BAR's supplement prints the
same numbers for "log sigma": ``init_log_var: [-18, 0.02]`` is that literal reading).

Loss: ``CE + kl_weight * sum_l w_l * sum_i 1/2 log(1 + mu_i^2 / sigma_i^2)``, the closed-form KL of the
code's ``kl_closed_form`` (without its 1e-8 added to sigma^2), summed over the channels of layer l and weighted by
``w_l`` (``layer_weight``): ``width`` (default) is the feature map's side sqrt(H_l W_l), which is what
every configuration of the official README computes (``kl_mult`` m_l = 1/32 ... 1/2 by stage times
H_l W_l = 32^2 ... 2^2); ``area`` is H_l W_l (``kl_mult = 1``); ``none`` is 1. ``kl_weight`` is the
code's ``--kl-fac`` (its README runs 1e-5 ... 3e-5).

Select: a channel is pruned where ``log_alpha >= threshold`` (default 0, the code's ``mask_thresh``);
a gated tensor whose channels all died that would disconnect the network gets its best channel back
(:func:`ensure_connected`). There is no budget (L2): the report states the MACs reached (and the
budget's target when one is given); a study reaches a budget by bisecting ``kl_weight``. Kept maps are
multiplied by their frozen mu after hard pruning (``post_prune_scale: mu``, the code's evaluation gate;
``one`` multiplies by 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError
from ..hooks import ParamGroup
from ..pruning.compact import compact
from ..pruning.gates import FixedGate, GatedModel, GaussianGate, attach_gates, strip_gates
from ..pruning.result import SelectReport
from ..pruning.structure import Structure, ensure_connected
from . import register
from .base import Method
from .options import Literal, MethodOptions, dataclass

LOG_EPS = 1e-8  # the code's epsilon in log(mu^2 + eps)


class IBGate(GaussianGate):
    """A :class:`GaussianGate` with the IB code's threshold and per-example noise.

    ``threshold``: a channel is alive where ``log sigma^2 - log(mu^2 + 1e-8) < threshold``.
    ``noise``: ``"example"`` draws one eps per channel per example (the code's ``reparameterize``),
    ``"batch"`` one per channel per minibatch.
    """

    def __init__(self, channels: int, mu=(1.0, 0.01), log_var=(-9.0, 0.01), threshold: float = 0.0,
                 noise: str = "example"):
        super().__init__(channels, mu=tuple(mu), log_var=tuple(log_var))
        if noise not in ("example", "batch"):
            raise ValueError("noise must be 'example' or 'batch'")
        self.threshold = float(threshold)
        self.noise = noise

    def alive(self):
        return self.log_alpha().detach() < self.threshold

    def channel_values(self):
        if self.training and self.noise == "example":
            return None  # one value per sample: the BN is not fused with the gate
        return super().channel_values()

    def forward(self, x, conv_input=None):
        if self.training and self.noise == "example":
            eps = torch.randn(x.shape[0], self.channels, device=self.mu.device, dtype=self.mu.dtype)
            z = self.mu + torch.exp(0.5 * self.log_var) * eps
            return x * z.to(x.dtype).view(x.shape[0], self.channels, *([1] * (x.dim() - 2)))
        return super().forward(x, conv_input)

    def extra_repr(self):
        return f"channels={self.channels}, threshold={self.threshold:g}, noise={self.noise}"


def kl_per_channel(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``1/2 log(1 + mu^2 / sigma^2)`` per channel (the code's ``kl_closed_form`` before its weights)."""
    return 0.5 * torch.log1p(mu.pow(2) * torch.exp(-log_var))


def layer_weights(spec, names, kind: str) -> dict[str, float]:
    """The KL weight w_l of each gated tensor: ``width`` sqrt(H W), ``area`` H W, ``none`` 1."""
    out = {}
    for n in names:
        area = spec.tensor(n).area
        out[n] = {"width": math.sqrt(area), "area": float(area), "none": 1.0}[kind]
    return out


@dataclass
class IbOptions(MethodOptions):
    """IB's options.

    ``kl_weight``: the weight of the KL term (the code's ``--kl-fac``); ``layer_weight``: each layer's
    multiplier of its KL sum (module docstring); ``threshold``: prune where log alpha >= threshold;
    ``init_mu``, ``init_log_var``: (mean, std) of mu and of log sigma^2 at initialisation; ``noise``:
    one eps per example (the code) or per minibatch; ``gate_lr``: Adam's step on mu and log sigma^2;
    ``gate_weight_decay``: their (L2) weight decay (the code applies the network's, 5e-5 in its README
    runs; 0 here, as every gate of the package); ``post_prune_scale``: kept maps multiplied by their
    frozen ``mu`` (the code's evaluation gate) or by 1 after hard pruning.
    """

    kl_weight: float = 1e-5
    layer_weight: Literal["width", "area", "none"] = "width"
    threshold: float = 0.0
    init_mu: tuple[float, float] = (1.0, 0.01)
    init_log_var: tuple[float, float] = (-9.0, 0.01)
    noise: Literal["example", "batch"] = "example"
    gate_lr: float = 1e-3
    gate_weight_decay: float = 0.0
    post_prune_scale: Literal["mu", "one"] = "mu"

    def check(self):
        super().check()
        if self.kl_weight < 0:
            raise ConfigError(f"ib option kl_weight must be >= 0, got {self.kl_weight}")
        if self.gate_lr <= 0:
            raise ConfigError(f"ib option gate_lr must be > 0, got {self.gate_lr}")
        if self.gate_weight_decay < 0:
            raise ConfigError(f"ib option gate_weight_decay must be >= 0, got {self.gate_weight_decay}")
        if self.init_mu[1] < 0 or self.init_log_var[1] < 0:
            raise ConfigError(f"ib options init_mu and init_log_var are [mean, std] with std >= 0, got "
                              f"{list(self.init_mu)} and {list(self.init_log_var)}")


@register("ib")
class InformationBottleneck(Method):
    learns = True
    Options = IbOptions
    slot_set = "outputs"  # BAR's comparison: stem, mid, delta, proj (every conv output)
    honours_groups = False  # one gate per tensor decides its channels
    budget_tolerance = None  # threshold selection: the cost is what kl_weight reached (L2)
    needs_budget = False  # bisect kl_weight for a budget (a study), not the method

    def divergence_hint(self) -> str:
        return f"method.kl_weight={self.options.kl_weight:g} or method.gate_lr={self.options.gate_lr:g}"

    def prepare(self, spec, budget):
        if budget is not None and budget.metric == "latency":
            raise ConfigError("ib reports the cost its threshold reached in macs, flops, params, volume or channels; "
                              "a latency budget is not measured here (use budget.metric: macs)")
        super().prepare(spec, budget)

    # -- gates -------------------------------------------------------------------------------------
    def attach(self, net):
        from ..models.registry import describe

        o = self.options
        return attach_gates(net, lambda t: IBGate(t.channels, mu=o.init_mu, log_var=o.init_log_var,
                                                  threshold=o.threshold, noise=o.noise),
                            self.slots(describe(net)))

    def folds_gates(self):
        return self.options.post_prune_scale == "mu"

    # -- learning ----------------------------------------------------------------------------------
    def setup(self, trainer):
        gated = trainer.model
        self._weights = layer_weights(gated.spec, gated.gate_names, self.options.layer_weight)

    def param_groups(self, trainer):
        params = [p for _, g in trainer.model.items() for p in (g.mu, g.log_var)]
        return [ParamGroup("gates", params, optimizer="adam", lr=self.options.gate_lr,
                           weight_decay=self.options.gate_weight_decay, schedule="main")]

    def kl(self, gated: GatedModel, weights: dict | None = None) -> torch.Tensor:
        """``sum_l w_l sum_i 1/2 log(1 + mu_i^2 / sigma_i^2)`` over the gates of ``gated``."""
        if weights is None:
            weights = layer_weights(gated.spec, gated.gate_names, self.options.layer_weight)
        total = None
        for name, g in gated.items():
            s = weights[name] * kl_per_channel(g.mu, g.log_var).sum()
            total = s if total is None else total + s
        return total

    def loss_terms(self, trainer, batch):
        return {"ib_kl": self.options.kl_weight * self.kl(trainer.model, self._weights)}

    def end_epoch(self, trainer, epoch):
        from ..counting import count

        gated = trainer.model
        s = Structure.from_gates(gated)
        c, c0 = count(gated.spec, s), count(gated.spec)
        with torch.no_grad():
            la = torch.cat([g.log_alpha().detach().flatten() for _, g in gated.items()])
        return {"alive_fraction": sum(len(v) for v in s.alive.values()) / sum(s.channels.values()),
                "f_factor": c0.macs / max(c.macs, 1), "v_factor": c0.volume / max(c.volume, 1),
                "log_alpha_median": float(la.median())}

    # -- selection ---------------------------------------------------------------------------------
    def log_alpha(self, model) -> dict[str, np.ndarray]:
        return {n: g.log_alpha().detach().double().cpu().numpy() for n, g in model.items()}

    def select(self, model, spec, budget):
        from ..pruning.budget import measure

        s = Structure.from_gates(model)
        # a tensor whose channels all closed and whose loss would disconnect the network: its best back
        s = ensure_connected(s, spec, {n: -la for n, la in self.log_alpha(model).items()})
        metric = budget.metric if budget is not None else "macs"
        achieved = measure(spec, s, metric)
        reference = measure(spec, {}, metric)
        target = budget.keep * reference if budget is not None else None
        extra = {"threshold": self.options.threshold, "kl_weight": self.options.kl_weight,
                 "revived": s.meta.get("revived", []), "achieved_keep": achieved / reference,
                 "budget_rule": "none: IB reaches what kl_weight gives; bisect kl_weight for a budget (L2)"}
        if target is not None:
            extra["target_keep"] = budget.keep
        rule = f"log sigma^2 - log mu^2 < {self.options.threshold:g} (prune where >= threshold)"
        return s, SelectReport(rule, metric, target, achieved, s.counts(), extra)

    # -- after pruning -----------------------------------------------------------------------------
    def kept_values(self, model, structure):
        if self.options.post_prune_scale == "mu":
            return mu_values(model, structure)
        return super().kept_values(model, structure)

    def hard_prune(self, model, structure):
        if self.options.post_prune_scale == "mu":
            import copy

            device = next(model.net.parameters()).device
            gates = {n: FixedGate(v.to(device)) for n, v in mu_values(model, structure).items()}
            # on a copy: attaching fixed gates to model.net would replace the learned gates' hooks
            net = strip_gates(copy.deepcopy(model.net))
            net.__dict__.pop("_prunelab_spec", None)
            return compact(GatedModel(net, gates, model.spec), structure)
        return compact(model.net, structure)


def mu_values(model, structure) -> dict:
    """Kept channels' frozen mu (a revived channel's too), dead channels 0; a tensor without a gate keeps 1."""
    gates = dict(model.items())
    kept = {n: torch.as_tensor(m, dtype=torch.float32) for n, m in structure.masks().items()}
    return {n: m * gates[n].mu.detach().cpu().float() if n in gates else m for n, m in kept.items()}
