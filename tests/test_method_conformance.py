"""Every registered method, present and future, satisfies the same contract.

For each entry of ``methods.list_methods()``: made from its defaults (and from its own config), attached
to a small model, two training steps on synthetic data through the shared trainer, finalized to the
target budget (met within the method's documented tolerance), the saved result reloads and computes
the same outputs, the pruned module equals the masked model in eval mode, and the method's state
round-trips through a checkpoint (a fresh method with the loaded state selects the same result).
"""

from __future__ import annotations

import io

import pytest
import torch

from prunelab import methods, models
from prunelab.config import TrainConfig
from prunelab.pruning.budget import Budget
from prunelab.pruning.gates import FixedGate, GatedModel
from prunelab.pruning.result import KINDS, DynamicResult, GeneratedResult, SelectReport, StaticResult, load_result
from prunelab.train.trainer import Trainer

BUDGET = Budget("macs", 0.5)


class SyntheticLoader:
    """Two seeded batches of random 32x32 images, in the trainer's loader interface."""

    def __init__(self, n_batches=2, batch=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.data = [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g),
                      torch.arange(i * batch, (i + 1) * batch)) for i in range(n_batches)]

    def set_epoch(self, epoch):
        pass

    def batches(self, start=0):
        yield from self.data[start:]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


def small_net(seed=0):
    torch.manual_seed(seed)
    net = models.create("resnet20")
    with torch.no_grad():  # distinct BN statistics, so that masked channels matter in eval mode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 1.0)
    return net


def required_options(name, tmp_path) -> dict:
    """Options a method cannot default (a file it reads): made here for the small net."""
    if name == "plan":  # a random structure plan on both convs of every block
        import numpy as np

        from prunelab.pruning.structure import Structure

        spec = models.describe(small_net())
        s = Structure.random(spec, np.random.default_rng(0), slots=("mid", "delta"), keep=(0.4, 0.6))
        s.save(tmp_path / "plan.json")
        return {"plan": str(tmp_path / "plan.json")}
    return {}


def make(name, tmp_path):
    return methods.create(name, **required_options(name, tmp_path))


def learned(name, tmp_path, seed=0):
    """Method ``name`` with defaults, attached to a small net and trained for two steps."""
    m = make(name, tmp_path)
    net = small_net(seed)
    model = m.attach(net)
    spec = models.describe(net)
    m.prepare(spec, BUDGET)
    hooks = [m] if m.learns else []
    cfg = TrainConfig(epochs=1, progress=False, channels_last=False, label_smoothing=0.0)
    Trainer(model, SyntheticLoader(), {}, train_cfg=cfg, hooks=hooks, device="cpu").fit()
    return m, model, spec


def checkpointed(obj):
    """``obj`` after torch.save / torch.load(weights_only=True), as a checkpoint keeps it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", methods.list_methods())
def test_method_contract(name, tmp_path):
    cls = methods.get(name)
    assert cls.result_kind in KINDS
    m = make(name, tmp_path)
    config = m.config()
    assert config["name"] == name
    assert methods.from_config(config).config() == config  # the config recreates the method

    m, model, spec = learned(name, tmp_path)
    result = m.finalize(model, spec, BUDGET)
    assert result.kind == cls.result_kind
    rep = result.report
    assert isinstance(rep, SelectReport) and rep.rule and rep.metric in ("macs", "flops", "volume", "params")
    assert set(rep.widths) <= set(spec.names) and all(0 <= w <= spec.tensor(n).channels for n, w in rep.widths.items())
    flat = rep.to_dict()
    assert {"rule", "metric", "target", "achieved", "widths"} <= set(flat)
    assert SelectReport.from_dict(flat).to_dict() == flat
    cost = result.cost(SyntheticLoader(1))
    if m.budget_tolerance is not None:  # met by selection: at most the target, within the tolerance below it
        # the budget's 100 % is the dense model, or the reference the method documents (PFS: the unexpanded one)
        reference = rep.extra.get("reference", getattr(models_cost(spec), rep.metric))
        assert rep.target == pytest.approx(BUDGET.keep * reference)
        assert rep.achieved <= rep.target * (1 + 1e-9)
        assert (rep.target - rep.achieved) / rep.target <= m.budget_tolerance, (rep.achieved, rep.target)
        assert getattr(cost, rep.metric) == pytest.approx(rep.achieved)
        assert cost.macs < models_cost(spec).macs  # something was pruned
    elif result.kind == "dynamic":  # a distribution over inputs, measured on a loader
        assert rep.achieved is None and cost.per_instance is not None
        assert cost.per_instance["macs"].shape == (16,) and cost.macs <= models_cost(spec).macs
    else:  # reached by training: the report still says what was reached
        assert rep.achieved == pytest.approx(getattr(cost, rep.metric))

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    module = result.module.eval()
    with torch.no_grad():
        out = module(x)
    # saved and reloaded: the same outputs
    result.save(tmp_path / "r")
    again = load_result(tmp_path / "r")
    assert again.kind == result.kind and again.report.to_dict() == flat
    with torch.no_grad():
        torch.testing.assert_close(again.module.eval()(x), out, rtol=1e-5, atol=1e-5)
    # the pruned module computes what the masked model computes (eval mode); a dynamic one, input by
    # input, what the dense network computes with that input's masks
    if isinstance(result, DynamicResult):
        with torch.no_grad():
            module(x)
            masks = {n: g.values().detach().clone() for n, g in module.items()}
            for i in range(len(x)):
                net = small_net()
                net.load_state_dict(module.net.state_dict())
                ref = GatedModel(net, {n: FixedGate(v[i]) for n, v in masks.items()}, spec, fuse_bn=False).eval()
                torch.testing.assert_close(ref(x[i:i + 1]), out[i:i + 1], rtol=1e-4, atol=1e-4)
    if isinstance(result, GeneratedResult):  # its masks do not depend on the input: the extracted network
        with torch.no_grad():
            torch.testing.assert_close(result.to_static().module.eval()(x), out, rtol=1e-4, atol=1e-4)
    if isinstance(result, StaticResult):
        masked = m.masked(model, result.structure).eval()
        with torch.no_grad():
            torch.testing.assert_close(out, masked(x), rtol=1e-4, atol=1e-4)
    # the method's state and the learned weights survive a checkpoint: a fresh method selects the same
    fresh = make(name, tmp_path)
    model2 = fresh.attach(small_net(seed=1))
    model2.load_state_dict(checkpointed(model.state_dict()))
    fresh.load_state_dict(checkpointed(m.state_dict()))
    fresh.prepare(spec, BUDGET)
    result2 = fresh.finalize(model2, spec, BUDGET)
    assert result2.report.to_dict() == flat
    if isinstance(result, StaticResult):
        assert result2.structure.counts() == result.structure.counts()
        assert all((result2.structure.alive[n] == a).all() for n, a in result.structure.alive.items())


def models_cost(spec):
    from prunelab.counting import count

    return count(spec)


def test_bad_options_are_refused_when_the_method_is_made():
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="has no option 'selct'. Did you mean 'select'"):
        methods.create("lzr", selct="budget")
    with pytest.raises(ConfigError, match="option 'select' must be one of 'threshold', 'budget'"):
        methods.create("lzr", select="best")
    with pytest.raises(ConfigError, match="post_prune_scale' must be one of 'one', 'zhat'"):
        methods.create("bar", post_prune_scale="z")
    with pytest.raises(ConfigError, match="'min_channels' must be an integer"):
        methods.create("l1", min_channels="two")
    with pytest.raises(ConfigError, match="'lambda' must be a number"):
        methods.create("pfs", **{"lambda": float("nan")})
