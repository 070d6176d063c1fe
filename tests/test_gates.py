"""Gate kinds, the gated-model wrapper, and the core carrying per-instance and generated gates."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunelab import models
from prunelab.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from prunelab.counting import count
from prunelab.pruning.compact import compact
from prunelab.pruning.gates import (FixedGate, GaussianGate, GeneratedGate, HardConcreteGate, PerInstanceGate,
                                    ScalarGate, attach_gates)
from prunelab.pruning.structure import Structure
from prunelab.train.run import build_loaders
from prunelab.train.trainer import Hook, ParamGroup, Trainer


def test_hard_concrete_closed_forms():
    g = HardConcreteGate(3)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([0.0, -math.log(11) - 1e-3, -math.log(11) + 1e-3]))
    assert torch.allclose(g.prob_nonzero()[0], torch.tensor(1 - 0.1682), atol=1e-4)  # not the supplement's 0.23
    assert abs(float(g.values().detach()[0]) - 0.5) < 1e-6
    assert g.alive().tolist() == [True, False, True]  # alive iff log alpha > -ln 11
    u = HardConcreteGate(1, init=("uniform", 0.0, 0.0))
    u.train()
    zeros = float(torch.stack([u.sample() for _ in range(20000)]).eq(0).float().mean())
    assert abs(zeros - 0.1682) < 0.01  # Monte-Carlo mass at z = 0
    init = HardConcreteGate(1000).log_alpha
    assert 0 <= float(init.detach().min()) and float(init.detach().max()) <= 0.01  # BAR's U(0, 0.01)


def test_other_gate_kinds():
    s = ScalarGate(4)
    with torch.no_grad():
        s.gate.copy_(torch.tensor([1.0, 0.0, 0.5, 0.0]))
    assert s.alive().tolist() == [True, False, True, False]
    f = FixedGate.from_alive(5, [0, 3])
    assert f.values().tolist() == [1, 0, 0, 1, 0]
    ib = GaussianGate(6)
    assert ib.alive().all() and torch.allclose(ib.values(), ib.mu)  # log sigma^2 = -9: every channel alive
    with torch.no_grad():
        ib.log_var[0] = 5.0
    assert not ib.alive()[0] and ib.values()[0] == 0
    ib.train()
    x = torch.ones(2, 6, 3, 3)
    assert not torch.equal(ib(x), ib(x))  # stochastic in training


def test_gates_multiply_the_right_tensor_and_deepcopy():
    import copy

    net = models.create("resnet20").eval()
    g = attach_gates(net, lambda t: FixedGate(torch.zeros(t.channels)), names=["layer1.0.mid"]).eval()
    x = torch.randn(1, 3, 32, 32)
    dup = copy.deepcopy(g)
    with torch.no_grad():
        dup.gate("layer1.0.mid").value.fill_(1.0)  # the copy's gate is independent of the original's
        a, b = g(x), dup(x)
    assert not torch.equal(a, b)
    assert torch.equal(g.detach_gates()(x), b)  # without gates the network is the dense one


class ToyPredictor(nn.Module):
    """Saliency from the pooled conv input (a minimal ManiDP-like predictor)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)
        nn.init.constant_(self.fc.bias, 1.0)

    def forward(self, h):
        return torch.relu(self.fc(h.mean((2, 3))))


def test_per_instance_gate_through_core():
    net = models.create("resnet20")
    spec = models.describe(net)
    names = [t.name for t in spec.select("mid")][:3]
    gates = {n: PerInstanceGate(spec.tensor(n).channels,
                                ToyPredictor(net.get_submodule(spec.tensor(n).conv).in_channels, spec.tensor(n).channels),
                                threshold=0.9) for n in names}
    gated = attach_gates(net, lambda t: gates[t.name], names=names)
    x = torch.randn(6, 3, 32, 32)
    gated.eval()
    with torch.no_grad():
        gated(x)
    per = {n: gated.gate(n).alive_per_instance().sum(1).numpy() for n in names}
    assert all(v.shape == (6,) for v in per.values())
    assert any(len(set(v.tolist())) > 1 for v in per.values())  # instance-dependent widths
    macs = count(spec, widths=per).macs
    assert macs.shape == (6,) and np.all(macs <= count(spec).macs)
    # masking one instance's dead channels is exact: the conv output is zero there
    out = {}
    net.layer1[0].bn1.register_forward_hook(lambda m, i, o: out.__setitem__("o", o))
    with torch.no_grad():
        gated(x)
    dead = ~gated.gate(names[0]).alive_per_instance()
    assert torch.all(out["o"][dead] == 0)
    # gradients reach the predictors in training
    gated.train()
    gated(x).sum().backward()
    assert all(g.predictor.fc.weight.grad is not None for g in gates.values())
    try:
        compact(gated)
        raise AssertionError("dynamic gates must not compact")
    except Exception as e:
        assert "per-instance" in str(e)


class ToyGenerator(Hook):
    """A generator network producing every gate's values each step (a minimal DDNP-like setup)."""

    def __init__(self, gated):
        self.gated = gated
        self.names = [n for n, _ in gated.items()]
        widths = [g.channels for _, g in gated.items()]
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, sum(widths)))
        self.z = torch.randn(4)
        self.splits = widths

    def param_groups(self, trainer):
        return [ParamGroup("generator", list(self.net.parameters()), optimizer="adam", lr=1e-2)]

    def before_forward(self, trainer, batch):
        soft = torch.sigmoid(self.net(self.z) + 3)
        for (n, g), v in zip(self.gated.items(), soft.split(self.splits)):
            g.set(train_value=v, eval_value=(v.detach() > 0.5).float())


def test_generated_gate_through_trainer():
    net = models.create("resnet20")
    gated = attach_gates(net, lambda t: GeneratedGate(t.channels), slots="mid")
    gen = ToyGenerator(gated)
    for p in net.parameters():
        p.requires_grad_(False)  # frozen backbone, as in DDNP's search
    before = [p.detach().clone() for p in gen.net.parameters()]
    tl, ev = build_loaders(DataConfig(train_per_class=10, test_per_class=2, batch_size=20), "cpu")
    tr = Trainer(gated, tl, ev, train_cfg=TrainConfig(epochs=1, max_steps=3, progress=False),
                 optim_cfg=OptimConfig(), schedule_cfg=ScheduleConfig(name="constant", warmup=0), hooks=[gen], device="cpu")
    assert tr.group_names == ["generator"]  # the frozen backbone has no optimiser
    tr.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.net.parameters()))
    s = Structure.from_gates(gated)  # eval values are hard 0/1 masks: compactable
    small = compact(gated, s).eval()
    x = torch.randn(2, 3, 32, 32)
    gated.eval()
    with torch.no_grad():
        assert torch.allclose(gated(x), small(x), atol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_gates_folded_into_batchnorm_equal_the_gate_after_it(training):
    """A channel-wise gate after a BN is computed inside the BN's affine: same outputs, gradients
    and running statistics as multiplying the BN output."""
    torch.manual_seed(0)
    base = models.create("bar_wrn", k=1, blocks_per_stage=1)
    x = torch.randn(6, 3, 32, 32)
    outs = []
    for fuse in (False, True):
        net = copy.deepcopy(base)
        torch.manual_seed(1)
        gm = attach_gates(net, lambda t: HardConcreteGate(t.channels, init=("normal", 0.5, 1.0)), fuse_bn=fuse)
        gm.train(training)
        torch.manual_seed(2)  # same Hard Concrete noise draws
        y = gm(x)
        y.square().sum().backward()
        grads = {k: p.grad.clone() for k, p in gm.named_parameters() if p.grad is not None}
        outs.append((y.detach(), grads, {k: v.clone() for k, v in gm.state_dict().items()}))
    (y0, g0, s0), (y1, g1, s1) = outs
    assert torch.allclose(y0, y1, atol=1e-5, rtol=1e-4)
    assert g0.keys() == g1.keys() and any(k.startswith("gates.") for k in g0)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-4, rtol=1e-3), k
    assert s0.keys() == s1.keys()  # folding adds no state
    for k in s0:
        assert torch.allclose(s0[k].float(), s1[k].float(), atol=1e-5), k


def test_folded_gates_survive_deepcopy_and_detach():
    torch.manual_seed(0)
    gm = attach_gates(models.create("resnet20"), lambda t: ScalarGate(t.channels), slots=["mid"])
    with torch.no_grad():
        for g in gm.gates.values():
            g.gate.uniform_(0, 1)
    gm.eval()
    x = torch.randn(2, 3, 32, 32)
    twin = copy.deepcopy(gm)
    assert torch.allclose(gm(x), twin(x))
    with torch.no_grad():  # the copy has its own gates
        for g in twin.gates.values():
            for p in g.parameters():
                p.zero_()
    assert not torch.allclose(gm(x), twin(x))
    bare = gm.detach_gates()
    assert all("forward" not in m.__dict__ for m in bare.modules())
    ref = copy.deepcopy(bare)
    assert torch.allclose(bare(x), ref(x))
