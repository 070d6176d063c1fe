"""Real dynamic inference of a per-instance gated CIFAR ResNet (ManiDP): only each input's kept channels are
computed.

The rule, equal to the masked network in eval mode: in every basic block, the saliency predictor of
conv_a reads the block input h, ``pi = min(ReLU(W2 ReLU(W1 mean_hw(h)) + b2), 1000)``; conv_a computes
only the channels with ``pi >= theta`` and ``pi != 0``, each scaled by its pi (the gate's mask
``pi 1[pi >= theta]``; ReLU commutes with the positive scale); conv_b's predictor reads those maps
(pruned channels count as zeros in its pooling, so its first FC keeps only their columns); conv_b reads
only conv_a's kept channels and computes only its own kept ones, scaled by their saliencies, and adds
them into the residual trunk (never pruned: option-A or identity shortcuts) at their positions. A block
whose conv_a keeps nothing adds a constant, BN_b's folded bias times conv_b's saliencies of a zero input
(computed once).

Equal up to float rounding: the predictors here pool and multiply in another order than the gates' own
modules, so a saliency within rounding of its threshold may fall the other way (as it may between two
batch sizes of the gated network itself).

How, chosen by measurement (ResNet-20 with random ManiDP gates keeping about 60 % of the channels per
input, ``bench/dynamic_inference.py --random-init --images 100``, 1 thread on this 2-core CPU, which
other jobs shared: the numbers are interleaved comparisons, best of 5 rounds, ms per image at batch 1):

* BN is folded into the conv weights and biases once, at construction: each conv is one ``F.conv2d``
  with bias. The kept filters, biases and saliencies are gathered per input with ``index_select`` into
  contiguous tensors (gathering one packed ``[W | b]`` matrix and passing the conv a strided view:
  2.19 against 1.97 ms, the conv then copies the weight itself). The predictors pool with a
  matrix-vector product against a 1/HW vector (2.1 us against 4.7 us for ``mean`` over (H, W)),
  thresholds are 0-dim tensors (a Python float costs a conversion per comparison: 2.6 against 1.0 us),
  and the saliency scales multiply the kept maps in place. Together 3-6 % of the time.
* The per-input path is one TorchScript function over plain lists of tensors, compiled once per
  process: no module calls and no Python per op. The same function in Python: 2.52-2.67 against
  2.22-2.29 ms (CPU time); ``torch.compile(dynamic=True)`` of it (it breaks the graph at each
  data-dependent width): 2.05 against 1.84 ms; the small work (predictors, thresholds, weight gathers)
  in NumPy and only the maps in torch: 2.09 against 1.87 ms.
* Not done: channels ordered by mean saliency so that kept sets are prefixes, taken as views. On the
  random-init network (500 test images), 18-54 % of the kept sets in stage 1 and 0-2 % in stage 3 are
  exact prefixes of that order; covering a kept set by its smallest prefix computes 1-7 extra channels
  per layer, which cost more in the convs than the gathers (a few us per layer) they save.
* Batches: grouping equal masks does not pay (among 128 test images a layer has 27-128 distinct kept
  sets), and one batch-1 pass per image forgoes the batched convs (1.75-2.2 ms per image at batch 128).
  A batch of more than :data:`PER_IMAGE_MAX` inputs runs as a whole, each block at the width of the
  union of its inputs' kept sets with each input's mask multiplied in (crossover: at batch 2 per image
  1.80 against 2.40 ms per image, at batch 3 equal, at batch 4 1.83 against 1.68). The union of 128
  random-init inputs is nearly every channel, so at batch 128 this is the masked dense network with
  folded BN: 0.92-1.01x the dense network's throughput.

Result (same bench, 5 runs): at batch 1 the dynamic network runs 1.23-1.49x faster than the dense one
(eager, BN folded), where the static network of the same MACs runs 1.34-1.40x faster (quotient
0.89-1.08, target >= 0.7); against both traced with TorchScript, 1.02-1.22x and 1.40-1.56x (0.71-0.78).
At batch 128: 0.92-1.01x against 1.11-1.18x (0.81-0.87). The old implementation (per-layer module calls,
BN as scale and shift, a zero-filled pooled vector per block) ran 0.64-0.65x at batch 1.
"""

from __future__ import annotations

import warnings
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.resnet_cifar import CifarResNet, ShortcutA

PER_IMAGE_MAX = 2  # batches up to this size run image by image (module docstring: the crossover)
SALIENCY_MAX = 1000.0  # the predictors' upper clamp


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode ``bn(conv(x))`` as one conv's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return (conv.weight * scale.view(-1, 1, 1, 1)).detach().contiguous(), bias.detach().contiguous()


def _effective_threshold(threshold, dtype) -> float:
    """A mask value ``pi 1[pi >= theta]`` is non-zero iff ``pi >= max(theta, smallest positive value)``
    (``pi >= 0``): one comparison instead of two."""
    t = float(threshold)
    tiny = float(torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)))
    return max(t, tiny)


def _predictor(gate, dtype) -> list[Tensor]:
    """``[W1, b1, W2, b2]`` of a gate's two-layer predictor (b1 zeros when the first FC has no bias)."""
    p = gate.predictor
    w1 = p.fc1.weight.detach().to(dtype).contiguous()
    b1 = p.fc1.bias.detach().to(dtype) if p.fc1.bias is not None else w1.new_zeros(w1.shape[0])
    return [w1, b1, p.fc2.weight.detach().to(dtype).contiguous(), p.fc2.bias.detach().to(dtype).contiguous()]


def _saliency(pooled: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return torch.addmv(b2, w2, torch.addmv(b1, w1, pooled).relu_()).clamp_(0.0, SALIENCY_MAX)


def _forward_one(x: Tensor, stem_w: Tensor, stem_b: Tensor, tensors: List[List[Tensor]], ints: List[List[int]],
                 fc_w: Tensor, fc_b: Tensor, pool: Tensor) -> Tensor:
    """One input (batch 1): the rule of the module docstring. TorchScript-compatible.

    ``tensors[i]``: predictor a (W1, b1, W2, b2), conv_a (weight, bias), predictor b (W1, b1, W2, b2),
    conv_b (weight, bias), the empty-conv_a constant, the two gates' effective thresholds (0-dim: a
    Python float costs a conversion per comparison), the 1/HW vectors of the block input and of the
    block's maps; ``ints[i]``: conv_a's stride, the shortcut's subsampling (0: identity) and its zero
    channels before and after, HW of the block input and of its maps; ``pool``: 1/HW of the last maps.
    (1000.0 is SALIENCY_MAX: TorchScript does not read global floats.)"""
    h = F.conv2d(x, stem_w, stem_b, 1, 1).relu_()
    for i in range(len(tensors)):
        a1, ab1, a2, ab2, w1, b1, p1, pb1, p2, pb2, w2, b2, const, ta, tb, pool_in, pool_out = tensors[i]
        stride, sub, lo, hi, hw_in, hw_out = ints[i]
        z = torch.addmv(ab1, a1, torch.mv(h.view(-1, hw_in), pool_in)).relu_()  # predictor a, pooled by mv
        s = torch.addmv(ab2, a2, z).clamp_(0.0, 1000.0)
        ka = s.ge(ta).nonzero().view(-1)
        r = F.pad(h[:, :, ::sub, ::sub], [0, 0, 0, 0, lo, hi]) if sub > 0 else h  # h is ours: added into in place
        if ka.numel() == 0:  # conv_b reads zeros: its output is a constant
            h = r.add_(const).relu_()
            continue
        u = F.conv2d(h, w1.index_select(0, ka), b1.index_select(0, ka), stride, 1).relu_()
        u.mul_(s.index_select(0, ka).view(-1, 1, 1))
        z = torch.addmv(pb1, p1.index_select(1, ka), torch.mv(u.view(-1, hw_out), pool_out)).relu_()
        s = torch.addmv(pb2, p2, z).clamp_(0.0, 1000.0)
        kb = s.ge(tb).nonzero().view(-1)
        if kb.numel() > 0:
            v = F.conv2d(u, w2.index_select(0, kb).index_select(1, ka), b2.index_select(0, kb), 1, 1)
            r.index_add_(1, kb, v.mul_(s.index_select(0, kb).view(-1, 1, 1)))
        h = r.relu_()
    return torch.addmv(fc_b, fc_w, torch.mv(h.view(-1, pool.size(0)), pool)).unsqueeze(0)


_COMPILED = []


def _compiled_forward_one():
    """The TorchScript version of :func:`_forward_one`, compiled once per process (the Python function,
    with a warning, where TorchScript fails: the same results, slower)."""
    if not _COMPILED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
                _COMPILED.append(torch.jit.script(_forward_one))
        except Exception as e:  # pragma: no cover - a PyTorch without (this much) TorchScript
            warnings.warn(f"dynamic inference runs in Python, slower: TorchScript failed ({str(e).splitlines()[0]})")
            _COMPILED.append(_forward_one)
    return _COMPILED[0]


class DynamicInference:
    """Inference of a per-instance gated CIFAR ResNet (``GatedModel`` with ``mid`` and ``delta`` gates
    that have ``.predictor`` with ``fc1``, ``fc2``, ``.threshold``, ``.channels``) that computes only each
    input's kept channels: ``DynamicInference(gated)(x) -> logits`` for ``x`` of shape (B, 3, H, W).

    Equal in outputs to ``gated(x)`` in eval mode (BN with its running statistics), up to float rounding
    (module docstring). Batches of up to :data:`PER_IMAGE_MAX` inputs run input by input, larger ones as
    a whole at the union of their kept sets. The weights are copied at construction (BN folded): build a
    new one after the model changes. ``script=False`` runs the per-input path in Python (slower).

    Raises:
        ConfigError: the network is not a CIFAR ResNet with option-A or identity shortcuts, or a block
            lacks a gate at ``mid`` or ``delta``.
    """

    def __init__(self, gated, script: bool = True):
        net = gated.net
        if not isinstance(net, CifarResNet) or any(not isinstance(b.shortcut, (nn.Identity, ShortcutA))
                                                   for layer in net.stages for b in layer):
            raise ConfigError("dynamic inference is implemented for CIFAR ResNets with option-A or identity "
                              "shortcuts (ManiDP's setting)")
        dtype = net.conv1.weight.dtype
        self.stem = _folded(net.conv1, net.bn1)
        self.blocks, self.shapes = [], []  # per block: its tensors (see _forward_one); stride and shortcut
        for s, layer in enumerate(net.stages, start=1):
            for b, block in enumerate(layer):
                try:
                    ga, gb = gated.gate(f"layer{s}.{b}.mid"), gated.gate(f"layer{s}.{b}.delta")
                except KeyError:
                    raise ConfigError(f"dynamic inference needs gates at layer{s}.{b}.mid and .delta") from None
                w1, b1 = _folded(block.conv1, block.bn1)
                w2, b2 = _folded(block.conv2, block.bn2)
                pa, pb = _predictor(ga, dtype), _predictor(gb, dtype)
                ta, tb = (torch.tensor(_effective_threshold(g.threshold, dtype), dtype=dtype) for g in (ga, gb))
                with torch.no_grad():  # conv_a keeps nothing: conv_b's predictor reads a zero vector
                    s0 = _saliency(w1.new_zeros(w1.shape[0]), *pb)
                    const = (b2 * s0 * (s0 >= tb)).view(-1, 1, 1)
                sc = block.shortcut
                sub, lo, hi = (sc.stride, sc.extra // 2, sc.extra - sc.extra // 2) if isinstance(sc, ShortcutA) \
                    else (0, 0, 0)
                self.blocks.append([*pa, w1, b1, *pb, w2, b2, const, ta, tb])
                self.shapes.append([block.conv1.stride[0], sub, lo, hi])
        self.fc = (net.fc.weight.detach().contiguous(), net.fc.bias.detach())
        self._sized: dict = {}  # input (H, W) -> the arguments of _forward_one that depend on it
        self._one = _compiled_forward_one() if script else _forward_one

    def _for_size(self, size: tuple[int, int]) -> tuple:
        """Block tensors with the 1/HW vectors of each block's input and maps appended, the shapes with
        those HW appended, and the last maps' 1/HW vector (the sizes follow from the input's)."""
        if size not in self._sized:
            tensors, ints, (h, w) = [], [], size
            for t, (stride, *rest) in zip(self.blocks, self.shapes):
                ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
                tensors.append(t + [t[0].new_full((h * w,), 1.0 / (h * w)), t[0].new_full((ho * wo,), 1.0 / (ho * wo))])
                ints.append([stride, *rest, h * w, ho * wo])
                h, w = ho, wo
            self._sized[size] = (tensors, ints, self.fc[0].new_full((h * w,), 1.0 / (h * w)))
        return self._sized[size]

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.contiguous()
            if x.shape[0] > PER_IMAGE_MAX:
                return self._batched(x)
            tensors, ints, pool = self._for_size(tuple(x.shape[2:]))
            one, (stem_w, stem_b), (fc_w, fc_b) = self._one, self.stem, self.fc
            return torch.cat([one(x[i:i + 1], stem_w, stem_b, tensors, ints, fc_w, fc_b, pool)
                              for i in range(x.shape[0])])

    def _batched(self, x: Tensor) -> Tensor:
        """A whole batch, each block at the width of the union of its inputs' kept channels, each
        input's mask multiplied in (a channel outside an input's kept set is zero for that input)."""
        h = F.conv2d(x, *self.stem, 1, 1).relu_()
        for (a1, ab1, a2, ab2, w1, b1, p1, pb1, p2, pb2, w2, b2, const, ta, tb), (stride, sub, lo, hi) in zip(
                self.blocks, self.shapes):
            s = F.linear(F.linear(h.mean((2, 3)), a1, ab1).relu_(), a2, ab2).clamp_(0.0, SALIENCY_MAX)
            m = s * (s >= ta)
            ka = _union(m)
            r = F.pad(h[:, :, ::sub, ::sub], [0, 0, 0, 0, lo, hi]) if sub > 0 else h
            if ka is not None and ka.numel() == 0:
                h = r.add_(const).relu_()
                continue
            u = F.conv2d(h, _take(w1, 0, ka), _take(b1, 0, ka), stride, 1).relu_()
            u.mul_(_take(m, 1, ka)[:, :, None, None])
            s = F.linear(F.linear(u.mean((2, 3)), _take(p1, 1, ka), pb1).relu_(), p2, pb2).clamp_(0.0, SALIENCY_MAX)
            m = s * (s >= tb)
            kb = _union(m)
            if kb is None:  # every channel: one fused pass adds the scaled maps into the trunk
                r.addcmul_(F.conv2d(u, _take(w2, 1, ka), b2, 1, 1), m[:, :, None, None])
            elif kb.numel():
                v = F.conv2d(u, _take(w2.index_select(0, kb), 1, ka), b2.index_select(0, kb), 1, 1)
                r.index_add_(1, kb, v.mul_(m.index_select(1, kb)[:, :, None, None]))
            h = r.relu_()
        return F.linear(h.mean((2, 3)), *self.fc)


def _union(m: Tensor) -> Tensor | None:
    """The channels some input of the batch keeps (columns of ``m`` with a non-zero), None for all."""
    k = m.any(0).nonzero().view(-1)
    return None if k.numel() == m.shape[1] else k


def _take(t: Tensor, dim: int, idx: Tensor | None) -> Tensor:
    return t if idx is None else t.index_select(dim, idx)
