"""The pruned-result interface carries all three kinds: static, dynamic (per-instance masks at
inference) and generated (masks produced by a controller network the trainer owns).

Two small test-only methods stand in for ManiDP and DDNP: ``toy_dynamic`` predicts a saliency per
channel from each input (a per-instance gate), ``toy_generated`` learns one logit per channel in a
controller that writes the gates before every forward pass. They are registered only inside these
tests, so the conformance test over ``methods.list_methods()`` never sees them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunelab import methods, models
from prunelab.config import TrainConfig, load_config
from prunelab.counting import count
from prunelab.hooks import ParamGroup
from prunelab.methods.base import Method
from prunelab.methods.options import MethodOptions, dataclass
from prunelab.pruning.gates import Controller, FixedGate, GatedModel, GeneratedGate, PerInstanceGate, attach_gates
from prunelab.pruning.result import DynamicResult, GeneratedResult, SelectReport, StaticResult, load_result
from prunelab.train.trainer import Trainer

from test_method_conformance import SyntheticLoader, small_net


class _Saliency(nn.Module):
    """Channel saliency from the conv input: global average pool, linear, ReLU."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)
        nn.init.normal_(self.fc.weight, std=0.5)
        nn.init.constant_(self.fc.bias, 0.3)

    def forward(self, x):
        return torch.relu(self.fc(x.mean((2, 3))))


@dataclass
class ToyDynamicOptions(MethodOptions):
    threshold: float = 0.3


class ToyDynamic(Method):
    learns = True
    Options = ToyDynamicOptions
    result_kind = "dynamic"
    budget_tolerance = None
    needs_budget = False

    def attach(self, net):
        spec = models.describe(net)
        in_ch = {op.writes: op.in_channels for op in spec.ops if op.writes}
        return attach_gates(net, lambda t: PerInstanceGate(t.channels, _Saliency(in_ch[t.name], t.channels),
                                                           self.options.threshold), self.slots(spec))

    def finalize(self, model, spec, budget):
        return DynamicResult(model, SelectReport("saliency >= threshold, per input", "macs"), self.config())


class _Logits(Controller):
    """One learnable logit per channel of every gated tensor; soft masks in training, hard in eval."""

    def __init__(self, spec, names):
        super().__init__()
        self.names = list(names)
        self.logits = nn.ParameterList([nn.Parameter(torch.linspace(-1, 2, spec.tensor(n).channels)) for n in names])

    def forward(self, gated, x):
        for n, l in zip(self.names, self.logits):
            gated.gate(n).set(train_value=torch.sigmoid(l), eval_value=(l > 0).float())


class ToyGenerated(Method):
    learns = True
    result_kind = "generated"
    budget_tolerance = None
    needs_budget = False

    def attach(self, net):
        spec = models.describe(net)
        names = [t.name for t in self.tensors(spec)]
        return attach_gates(net, lambda t: GeneratedGate(t.channels), names=names, controller=_Logits(spec, names))

    def param_groups(self, trainer):
        return [ParamGroup("controller", list(trainer.model.controller.parameters()), lr=0.05)]

    def finalize(self, model, spec, budget):
        return GeneratedResult(model, SelectReport("controller logit > 0", "macs"), self.config())


@pytest.fixture
def toy_methods():
    added = {"toy_dynamic": ToyDynamic, "toy_generated": ToyGenerated}
    for name, cls in added.items():
        methods.register(name)(cls)
    yield
    for name in added:
        methods._METHODS.pop(name)


def _train(method, net, steps_loader=None):
    model = method.attach(net)
    method.prepare(models.describe(net), None)
    cfg = TrainConfig(epochs=1, progress=False, channels_last=False, label_smoothing=0.0)
    tr = Trainer(model, steps_loader or SyntheticLoader(), {}, train_cfg=cfg, hooks=[method], device="cpu")
    tr.fit()
    return model, tr


def test_dynamic_result_costs_per_instance_and_equals_the_masked_network(toy_methods, tmp_path):
    m = methods.create("toy_dynamic")
    model, _ = _train(m, small_net())
    spec = model.spec
    result = m.finalize(model, spec, None)
    loader = SyntheticLoader(2, batch=8, seed=3)
    cost = result.cost(loader)
    widths = result.per_instance_widths(loader)
    assert cost.per_instance["macs"].shape == (16,)
    # each input's cost is the counter's cost of that input's widths
    for i in (0, 7, 15):
        assert cost.per_instance["macs"][i] == count(spec, widths={n: int(w[i]) for n, w in widths.items()}).macs
    assert cost.macs < count(spec).macs and cost.per_instance["macs"].std() > 0  # masks differ per input
    q = cost.quantiles()
    assert q[0.0] <= q[0.5] <= q[1.0]
    # the dynamic module equals, input by input, the dense network masked with that input's masks
    x = loader.data[0][0]
    model.eval()
    with torch.no_grad():
        out = model(x)
        masks = {n: g.values().detach().clone() for n, g in model.items()}
        for i in (0, 5):
            dense = small_net()
            dense.load_state_dict(model.net.state_dict())
            ref = GatedModel(dense, {n: FixedGate(v[i]) for n, v in masks.items()}, spec, fuse_bn=False).eval()
            torch.testing.assert_close(ref(x[i:i + 1]), out[i:i + 1], rtol=1e-4, atol=1e-4)
    # saved and loaded by its kind tag, with the same outputs
    result.save(tmp_path / "d")
    again = load_result(tmp_path / "d")
    assert isinstance(again, DynamicResult)
    with torch.no_grad():
        torch.testing.assert_close(again.module.eval()(x), out, rtol=1e-5, atol=1e-5)


def test_generated_result_controller_is_owned_by_the_trainer(toy_methods, tmp_path):
    m = methods.create("toy_generated")
    net = small_net()
    before = [p.detach().clone() for p in m.attach(small_net()).controller.parameters()]
    model, tr = _train(m, net)
    assert "controller" in tr.group_names  # its own optimiser, as the method asked
    after = list(model.controller.parameters())
    assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before))  # it learned
    state = tr.state_dict()["model"]
    assert any(k.startswith("controller.") for k in state)  # checkpointed with the model
    assert all(p.device == tr.device or p.device.type == tr.device.type for p in after)
    result = m.finalize(model, model.spec, None)
    s = result.structure()
    cost = result.cost()
    assert cost.macs == count(model.spec, s).macs < count(model.spec).macs
    static = result.to_static()
    assert isinstance(static, StaticResult)
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(static.module.eval()(x), model(x), rtol=1e-4, atol=1e-4)
    result.save(tmp_path / "g")
    again = load_result(tmp_path / "g")
    assert isinstance(again, GeneratedResult)
    assert again.structure().counts() == s.counts()


def test_eval_and_info_work_for_every_result_kind(toy_methods, tmp_path):
    from prunelab.workflows import compact_run, evaluate_run, run_info, run_pipeline

    base = {"train": {"progress": False}, "stages": {"learn": {"train": {"epochs": 1}}}}
    for name, kind, folder in (("l1", "static", "compact"), ("toy_dynamic", "dynamic", "final"),
                               ("toy_generated", "generated", "final")):
        cfg = load_config("resnet20_l1", "ci", overrides={**base, "method": {"name": name},
                                                          "budget": {"metric": "macs", "keep": 0.5}})
        res = run_pipeline(cfg, tmp_path / name, quiet=True)
        assert res["result_kind"] == kind and (tmp_path / name / folder / "plan.json").exists()
        assert (tmp_path / name / "pruned" / "plan.json").exists()
        ev = evaluate_run(tmp_path / name)
        assert ev["kind"] == kind and ev["acc"] == pytest.approx(res["final_test_acc"])
        assert ev["macs"] == pytest.approx(res["final_cost"]["mixed"]["macs"])
        assert f"result ({kind})" in run_info(tmp_path / name)
        if kind == "dynamic":
            assert "distribution" in res["pruned_cost"]["mixed"]
            from prunelab.errors import ConfigError

            with pytest.raises(ConfigError, match="per-instance"):
                compact_run(tmp_path / name, tmp_path / "c")
        else:
            out = compact_run(tmp_path / name, tmp_path / f"{name}-compact")
            assert isinstance(load_result(out), StaticResult)
