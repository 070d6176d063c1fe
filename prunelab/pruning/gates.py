"""Channel gates and the wrapper that attaches them to a plain model.

A gate multiplies a conv output (after its BatchNorm) channel-wise. Every kind exposes

* :meth:`Gate.values`   the deterministic gate (what evaluation, costs and compaction use),
* :meth:`Gate.alive`    which channels are alive,
* :meth:`Gate.prob_nonzero` the probability of being non-zero, where defined (else ``None``).

Kinds (docs/decisions.md §0.4): :class:`FixedGate` (0/1 or fixed values: random, WM, hard-pruned masks),
:class:`ScalarGate` (PFS, slimming), :class:`HardConcreteGate` (BAR, LZR), :class:`GaussianGate`
(IB), :class:`GeneratedGate` (values written by a generator network each step: DDNP) and
:class:`PerInstanceGate` (values predicted from the conv's input, one mask per sample: ManiDP).

:class:`GatedModel` attaches gates with forward hooks at the modules the model's spec names, so the
architectures themselves stay plain. For a gate g >= 0, g*ReLU(x) = ReLU(g*x): placing the gate
after BN and before the ReLU is the same as after the ReLU (docs/decisions.md §0.3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.registry import describe
from ..models.spec import ModelSpec


class Gate(nn.Module):
    """Base class: multiplies ``x`` of shape (B, C, ...) by a per-channel (or per-sample) gate."""

    per_instance = False  # values depend on the input (one mask per sample)
    needs_input = False  # reads the input of the conv producing the gated tensor
    _transient = ("_conv_input",)  # per-forward tensors (in the autograd graph): never copied or pickled

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in self._transient:
            if k in state:
                state[k] = None
        state.pop("_conv_input", None)
        return state

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)

    def values(self) -> torch.Tensor:
        """Deterministic gate values, shape (C,)."""
        raise NotImplementedError

    def sample(self) -> torch.Tensor:
        """Gate values used in a training forward pass (stochastic gates sample here)."""
        return self.values()

    def alive(self) -> torch.Tensor:
        """Boolean (C,): channels whose deterministic gate is non-zero."""
        return self.values().detach() != 0

    def prob_nonzero(self):
        """P(gate != 0) per channel, where the gate kind defines it; else None."""
        return None

    def mask(self) -> torch.Tensor:
        """Float 0/1 alive mask, shape (C,) (or (B, C) for per-instance gates)."""
        return self.alive().to(torch.float32)

    def forward(self, x: torch.Tensor, conv_input: torch.Tensor | None = None) -> torch.Tensor:
        g = self.sample() if self.training else self.values()
        return x * g.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    def channel_values(self):
        """The (C,) values this forward pass multiplies by, or None when they differ per sample."""
        if self.per_instance or self.needs_input:
            return None
        g = self.sample() if self.training else self.values()
        return g if g.dim() == 1 else None

    def _fused_bn_forward(self, x):
        """BatchNorm with the gate folded into its affine parameters: ``BN(x) * g`` computed as
        ``BN(x; weight * g, bias * g)``. Same result, but no extra pass over the activations in the
        forward or backward (a gated network then trains nearly as fast as a dense one)."""
        bn = self.__dict__["_fused_bn"]
        g = self.channel_values()
        if g is None:  # per-sample values: the plain BN, then the gate
            return self(type(bn).forward(bn, x), self.__dict__.pop("_conv_input", None))
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        keep_running = not bn.training or bn.track_running_stats
        weight = bn.weight * g if bn.weight is not None else g
        bias = bn.bias * g if bn.bias is not None else None
        return F.batch_norm(x, bn.running_mean if keep_running else None, bn.running_var if keep_running else None,
                            weight, bias, use_batch_stats, momentum, bn.eps)

    # hooks (bound methods, so a deep copy of the model calls the copied gate)
    def _forward_hook(self, module, inputs, output):
        out = self(output, self.__dict__.pop("_conv_input", None))
        return out

    def _stash_input(self, module, inputs):
        self.__dict__["_conv_input"] = inputs[0]

    def _mask_hook(self, module, inputs, output):
        m = self.mask().to(output.dtype)
        shape = (m.shape[0], m.shape[1]) if m.dim() == 2 else (1, m.shape[0])
        return output * m.view(*shape, *([1] * (output.dim() - 2)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class FixedGate(Gate):
    """Fixed values (0/1 masks of hard pruning, or frozen gate values). Not trainable."""

    def __init__(self, values):
        v = torch.as_tensor(values, dtype=torch.float32).flatten()
        super().__init__(v.numel())
        self.register_buffer("value", v.clone())

    @classmethod
    def from_alive(cls, channels: int, alive_idx) -> "FixedGate":
        v = torch.zeros(channels)
        v[torch.as_tensor(np.asarray(alive_idx, dtype=np.int64))] = 1.0
        return cls(v)

    def values(self):
        return self.value


class ScalarGate(Gate):
    """One learnable scalar per channel, ``out = gamma * x`` (PFS; network slimming uses BN's gamma).

    ``threshold``: channels with ``|gamma| <= threshold`` count as dead (0: exactly zero).
    """

    def __init__(self, channels: int, init: float = 1.0, threshold: float = 0.0):
        super().__init__(channels)
        self.gate = nn.Parameter(torch.full((channels,), float(init)))
        self.threshold = threshold

    def values(self):
        return self.gate

    def alive(self):
        return self.gate.detach().abs() > self.threshold


class HardConcreteGate(Gate):
    """Hard Concrete gate (Louizos et al. 2018; BAR supplement §9), one log-alpha per channel.

    Training sample (Eq. 4): ``z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (zeta - gamma)
    + gamma, 0, 1)`` with u ~ U(0, 1) clipped to [1e-6, 1-1e-6]. Deterministic gate:
    ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``; alive iff it is > 0
    (log_alpha > log(-gamma/zeta) = -2.398). ``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma/zeta))``.

    Args:
        init: ``("uniform", lo, hi)`` (BAR: U(0, 0.01)) or ``("normal", mean, std)`` (Louizos).
        noise: ``"batch"`` draws one u per channel per minibatch (B8, the package default);
            ``"example"`` one per channel per sample.
    """

    def __init__(self, channels: int, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1,
                 init=("uniform", 0.0, 0.01), noise: str = "batch"):
        super().__init__(channels)
        if not (gamma < 0 and zeta > 1 and beta > 0):
            raise ValueError("Hard Concrete needs gamma < 0 < 1 < zeta and beta > 0")
        if noise not in ("batch", "example"):
            raise ValueError("noise must be 'batch' or 'example'")
        self.beta, self.gamma, self.zeta, self.noise = float(beta), float(gamma), float(zeta), noise
        self.log_alpha = nn.Parameter(torch.empty(channels))
        kind, a, b = init
        with torch.no_grad():
            if kind == "uniform":
                self.log_alpha.uniform_(a, b)
            elif kind == "normal":
                self.log_alpha.normal_(a, b)
            else:
                raise ValueError(f"unknown init {kind!r}")

    def values(self):
        return torch.clamp(torch.sigmoid(self.log_alpha) * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)

    def _draw(self, shape):
        u = torch.rand(shape, device=self.log_alpha.device).clamp_(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return torch.clamp(s * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)

    def sample(self):
        return self._draw(self.log_alpha.shape)

    def prob_nonzero(self):
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def channel_values(self):
        if self.training and self.noise == "example":
            return None
        return super().channel_values()

    def forward(self, x, conv_input=None):
        if self.training and self.noise == "example":
            z = self._draw((x.shape[0], self.channels))
            return x * z.to(x.dtype).view(x.shape[0], self.channels, *([1] * (x.dim() - 2)))
        return super().forward(x, conv_input)

    def extra_repr(self):
        return f"channels={self.channels}, beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}, noise={self.noise}"


class GaussianGate(Gate):
    """Information-bottleneck gate (Dai et al. 2018): ``z = mu + sigma * eps`` while training.

    Parameters ``mu`` and ``log_var`` (log sigma^2); init mu ~ N(1, 0.01^2), log sigma^2 ~ N(-9, 0.01^2).
    A channel is dead when ``log_var - log mu^2 >= 0``; the deterministic gate is ``mu`` on alive
    channels and 0 elsewhere. z may be negative, so this gate sits after BN and before the ReLU.
    """

    def __init__(self, channels: int, mu=(1.0, 0.01), log_var=(-9.0, 0.01)):
        super().__init__(channels)
        self.mu = nn.Parameter(torch.randn(channels) * mu[1] + mu[0])
        self.log_var = nn.Parameter(torch.randn(channels) * log_var[1] + log_var[0])

    def log_alpha(self):
        return self.log_var - torch.log(self.mu.pow(2) + 1e-8)

    def alive(self):
        return self.log_alpha().detach() < 0

    def values(self):
        return self.mu * self.alive().to(self.mu.dtype)

    def sample(self):
        return self.mu + torch.exp(0.5 * self.log_var) * torch.randn_like(self.mu)

    def kl(self):
        """Per-channel 1/2 log(1 + mu^2 / sigma^2)."""
        return 0.5 * torch.log1p(self.mu.pow(2) / torch.exp(self.log_var))


class GeneratedGate(Gate):
    """Values written from outside each step (a generator network computes them for all layers).

    The generator calls :meth:`set` before the forward pass with the training values (in the graph,
    so gradients reach the generator) and, optionally, the deterministic values used in evaluation.
    """

    _transient = ("_conv_input", "_train_value")

    def __init__(self, channels: int):
        super().__init__(channels)
        self.register_buffer("eval_value", torch.ones(channels))
        self._train_value = None

    def set(self, train_value: torch.Tensor | None = None, eval_value: torch.Tensor | None = None):
        if train_value is not None:
            if train_value.shape[-1] != self.channels:
                raise ValueError(f"generated gate expects {self.channels} values, got {tuple(train_value.shape)}")
            self._train_value = train_value
        if eval_value is not None:
            self.eval_value.copy_(eval_value.detach().reshape(self.channels))

    def values(self):
        return self.eval_value

    def sample(self):
        if self._train_value is None:
            raise RuntimeError("GeneratedGate used in training before its generator set a value")
        return self._train_value


class PerInstanceGate(Gate):
    """A per-sample gate predicted from the input of the producing conv (dynamic pruning).

    ``predictor(conv_input) -> (B, C)`` saliencies ``pi >= 0``; the mask is ``pi * 1[pi >= threshold]``
    (hard support, soft values), identical in training and evaluation. After each forward pass the gate
    keeps ``last_saliency`` (un-thresholded, in the graph) and ``last_mask`` for losses and statistics.
    """

    per_instance = True
    needs_input = True
    _transient = ("_conv_input", "last_saliency", "last_mask")

    def __init__(self, channels: int, predictor: nn.Module, threshold: float = -1e4):
        super().__init__(channels)
        self.predictor = predictor
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.last_saliency = None
        self.last_mask = None

    def forward(self, x, conv_input=None):
        if conv_input is None:
            raise RuntimeError("PerInstanceGate needs the conv input; attach it with GatedModel")
        pi = self.predictor(conv_input)
        m = pi * (pi >= self.threshold).to(pi.dtype)
        self.last_saliency, self.last_mask = pi, m
        return x * m.to(x.dtype)[:, :, None, None]

    def values(self):
        if self.last_mask is None:
            raise RuntimeError("a per-instance gate has values only after a forward pass")
        return self.last_mask

    def alive(self):
        """Channels alive for at least one sample of the last batch."""
        return (self.values().detach() != 0).any(0)

    def alive_per_instance(self):
        return self.values().detach() != 0

    def mask(self):
        return (self.values().detach() != 0).float()


class Controller(nn.Module):
    """A method's learnable network that drives the gates (a generator, shared predictors).

    It is a submodule of the :class:`GatedModel` (``gated.controller``), so the trainer moves it to
    the device, wraps it for DDP together with the network, optimises it (in the parameter group
    its method asks for, else with the weights) and checkpoints it with the model. ``forward(gated, x)``
    runs at the start of every forward pass of the gated model, before the network, and sets the
    gates' values (e.g. :meth:`GeneratedGate.set`).
    """

    def forward(self, gated: "GatedModel", x: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def gate_key(name: str) -> str:
    """ModuleDict key of a gated tensor name (dots are not allowed in keys)."""
    return name.replace(".", "__")


class GatedModel(nn.Module):
    """A plain model with gates attached at the gated tensors of its spec.

    ``forward`` is the network's; state dict keys are ``net.*`` and ``gates.*``. Build one with
    :func:`attach_gates`. ``prunelab_name``/``prunelab_kwargs`` are forwarded from the network.
    """

    def __init__(self, net: nn.Module, gates: dict, spec: ModelSpec | None = None, fuse_bn: bool = True,
                 controller: Controller | None = None):
        super().__init__()
        self.fuse_bn = bool(fuse_bn)
        self.net = net
        self.spec = spec or describe(net)
        self.gate_names = list(gates)
        self.gates = nn.ModuleDict({gate_key(n): g for n, g in gates.items()})
        self.controller = controller
        self._hook()

    @property
    def prunelab_name(self):
        return getattr(self.net, "prunelab_name", None)

    @property
    def prunelab_kwargs(self):
        return getattr(self.net, "prunelab_kwargs", {})

    def _hook(self):
        for name in self.gate_names:
            t = self.spec.tensor(name)
            g = self.gates[gate_key(name)]
            if g.channels != t.channels:
                raise ValueError(f"gate for {name} has {g.channels} channels, the tensor has {t.channels}")
            # hooks are bound methods of the gates: copy.deepcopy of the whole model remaps them to
            # the copied gates, so a deep copy is a working, independent gated model
            if g.needs_input:
                self.net.get_submodule(t.conv).register_forward_pre_hook(g._stash_input)
            module = self.net.get_submodule(t.module)
            if self.fuse_bn and type(module) is nn.BatchNorm2d and not (g.per_instance or g.needs_input):
                # channel-wise gate right after a BN: fold it into the BN's affine (see _fused_bn_forward);
                # the gate keeps the BN outside its registered submodules (no duplicate state_dict keys)
                g.__dict__["_fused_bn"] = module
                module.forward = g._fused_bn_forward
            else:
                module.register_forward_hook(g._forward_hook)
            for m in t.mask_modules:
                self.net.get_submodule(m).register_forward_hook(g._mask_hook)

    def gate(self, name: str) -> Gate:
        return self.gates[gate_key(name)]

    def items(self):
        """``(tensor name, gate)`` pairs in spec order."""
        return [(n, self.gates[gate_key(n)]) for n in self.gate_names]

    def detach_gates(self) -> nn.Module:
        """Remove the gate hooks and return the bare network (its weights are shared, not copied)."""
        return strip_gates(self.net, self.gates.values())

    @property
    def per_instance(self) -> bool:
        """Whether any gate's values depend on the input (dynamic pruning)."""
        return any(g.per_instance for _, g in self.items())

    def forward(self, x):
        if self.controller is not None:
            self.controller(self, x)
        return self.net(x)

def strip_gates(net: nn.Module, gates=None) -> nn.Module:
    """Remove gate hooks and folded-BN forwards from ``net`` in place: those of ``gates``, or of every
    gate when None (use on a deep copy of a gated network to get the plain network); returns ``net``."""
    mine = None if gates is None else {id(g) for g in gates}

    def ours(fn) -> bool:
        owner = getattr(fn, "__self__", None)
        return isinstance(owner, Gate) and (mine is None or id(owner) in mine)

    for m in net.modules():
        if ours(m.__dict__.get("forward")):
            del m.__dict__["forward"]
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for k in [k for k, h in hooks.items() if ours(h)]:
                del hooks[k]
    return net


def attach_gates(net: nn.Module, make_gate, slots=None, names=None, fuse_bn: bool = True,
                 controller: Controller | None = None) -> GatedModel:
    """Attach ``make_gate(tensor) -> Gate`` to the tensors of the chosen slots (or names).
    ``fuse_bn``: fold channel-wise gates into the BatchNorm they follow (same values, faster);
    ``controller``: the method's network that sets the gates before each forward pass."""
    spec = describe(net)
    tensors = [spec.tensor(n) for n in names] if names is not None else spec.select(slots)
    return GatedModel(net, {t.name: make_gate(t) for t in tensors}, spec, fuse_bn=fuse_bn, controller=controller)
