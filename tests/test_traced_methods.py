"""Every registered method on the zoo's resnet20 and on three models described by tracing (issue 27, item 3).

The traced models are those of tests/test_traced_describe.py: torchvision's ResNet-18 with a CIFAR stem,
torchvision's MobileNetV2 (width 0.25 here, to stay fast) and a small CNN with a channel concatenation.
For each method of ``methods.list_methods()`` (a newly registered one is covered without a change here)
and each model: the method checks the model (``check``, before training), is attached, trains two steps
on synthetic data through the shared trainer and is finalized at 50 % of the MACs. Then

* the cost: within the method's documented tolerance of the budget, or it warned
  (:class:`~prunelab.methods.base.OffBudgetWarning`) and recorded ``off_budget`` in its report;
* the network: a static result's compact network computes what the masked dense network computes, and
  costs what its structure is counted at; a generated one's extracted network what the generators' masks
  compute; a dynamic one, input by input, what the dense network computes with that input's masks.

Where a method cannot work on a model it refuses in ``check``, before training, with one line naming
why and the fix (REFUSED); cases that fail for a reason outside the methods' files are xfail (XFAIL).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torchvision.models import mobilenet_v2

from conftest import randomize_bn
from test_method_conformance import SyntheticLoader
from test_traced_describe import NON_ZOO, CatNet
from prunelab import methods, models
from prunelab.config import TrainConfig
from prunelab.counting import count, measure_macs
from prunelab.errors import ConfigError
from prunelab.methods.base import OffBudgetWarning, flag_off_budget
from prunelab.methods.ddnp import R_TOLERANCE
from prunelab.pruning.budget import Budget
from prunelab.pruning.gates import FixedGate, GatedModel, strip_gates
from prunelab.pruning.result import DynamicResult, GeneratedResult, SelectReport, StaticResult
from prunelab.pruning.structure import Structure
from prunelab.train.trainer import Trainer

BUDGET = Budget("macs", 0.5)

MODELS = {
    "resnet20": lambda: models.create("resnet20"),
    "resnet18": NON_ZOO["resnet18"],  # torchvision's, CIFAR stem: conv1 3x3 stride 1, no max-pool
    "mobilenet_v2": lambda: mobilenet_v2(num_classes=10, width_mult=0.25),
    "catnet": CatNet,
}

# Methods that gate every conv output and decide each tensor on its own (BAR, L0) would give the members
# of a residual trunk different channels, which only the CIFAR ResNets' compaction builds.
_TRUNKS = ("decides each gated tensor on its own: compaction of {model} (family 'traced') keeps one channel set "
           "per residual trunk, and trunk stage1 is added from {members}; set method.slots to slots outside the "
           "trunks (method.slots: {slots})")
_R18 = {"model": "ResNet", "members": "stem, layer1.0.delta, layer1.1.delta", "slots": "['mid']"}
_MBV2 = {"model": "MobileNetV2", "members": "stem, features.1.conv.delta", "slots": "['conv', 'mid']"}
_RECON = "reconstructs the next layer, so each gated tensor must be read by exactly one conv and nothing else"
REFUSED = {
    ("bar", "resnet18"): "method bar " + _TRUNKS.format(**_R18),
    ("lzr", "resnet18"): "method lzr " + _TRUNKS.format(**_R18),
    ("bar", "mobilenet_v2"): "method bar " + _TRUNKS.format(**_MBV2),
    ("lzr", "mobilenet_v2"): "method lzr " + _TRUNKS.format(**_MBV2),
    ("ib", "resnet18"): "method ib " + _TRUNKS.format(**_R18),
    ("ib", "mobilenet_v2"): "method ib " + _TRUNKS.format(**_MBV2),
    # vq and id rewrite the next conv's input weights: a tensor read by more than one op cannot be
    # reconstructed (MobileNetV2's expansion feeds a depthwise and a projection conv; CatNet's stem two convs)
    **{(n, m): f"method {n} " + _RECON for n in ("vq", "id") for m in ("mobilenet_v2", "catnet")},
}

XFAIL = {}  # (method, model) -> why: a case failing for a reason outside the methods' files


def _case(name, model):
    if (name, model) in XFAIL:
        return pytest.param(name, model, marks=pytest.mark.xfail(strict=True, raises=RuntimeError,
                                                                 reason=XFAIL[name, model]))
    return pytest.param(name, model)


CASES = [_case(n, m) for n in methods.list_methods() for m in MODELS]


# --------------------------------------------------------------------------------------------------
# helpers


def build(model: str, seed: int = 0):
    """The model with distinct BN statistics (so that masked channels matter in eval mode) and its spec."""
    torch.manual_seed(seed)
    net = randomize_bn(MODELS[model]())
    spec = models.describe(net, example_input=torch.randn(2, 3, 32, 32))
    return net, spec


def required_options(name: str, spec, tmp_path) -> dict:
    """Options a method cannot default (a file it reads), made for ``spec``."""
    if name == "plan":  # a random plan on the tensors outside residual trunks
        slots = [s for s in spec.slots() if all(t.trunk is None for t in spec.select((s,)))]
        Structure.random(spec, np.random.default_rng(0), slots=slots, keep=(0.4, 0.6)).save(tmp_path / "plan.json")
        return {"plan": str(tmp_path / "plan.json")}
    return {}


def train(method, model, steps: int = 2):
    """``steps`` training steps (batch 8) through the shared trainer, the method as its hook."""
    cfg = TrainConfig(epochs=1, progress=False, channels_last=False, label_smoothing=0.0)
    hooks = [method] if method.learns else []
    Trainer(model, SyntheticLoader(n_batches=steps, batch=8), {}, train_cfg=cfg, hooks=hooks, device="cpu").fit()


def finalized(method, model, spec, budget=BUDGET):
    """The method's result and the off-budget warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = method.finalize(model, spec, budget)
    return result, [w for w in caught if issubclass(w.category, OffBudgetWarning)]


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max())))


def check_budget(method, result, spec, warned):
    """Within the method's documented tolerance of the budget, or warned and recorded off_budget."""
    rep = result.report
    off = rep.extra.get("off_budget")
    assert bool(warned) == (off is not None), (warned, off)
    if isinstance(result, StaticResult):  # the report's cost is the structure's
        assert getattr(count(spec, result.structure), rep.metric) == pytest.approx(rep.achieved)
    if method.budget_tolerance is not None:  # met by selection
        reference = rep.extra.get("reference", getattr(count(spec), rep.metric))
        assert rep.target == pytest.approx(BUDGET.keep * reference)
        within = rep.achieved <= rep.target * (1 + 1e-9) and \
            (rep.target - rep.achieved) / rep.target <= method.budget_tolerance
        assert within or off, (rep.achieved, rep.target)
    elif "R_hard" in rep.extra:  # DDNP: R of the extracted widths against p, reached by training
        within = abs(rep.extra["R_hard"] - rep.extra["p"]) <= R_TOLERANCE
        assert within or (off and off["achieved"] == pytest.approx(rep.extra["R_hard"])), rep.extra
        assert rep.achieved == pytest.approx(count(spec, widths=rep.widths).macs)


def check_outputs(method, model, result, spec):
    """The pruned module computes what its reference computes (eval mode, a random input)."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    module = result.module.eval()
    with torch.no_grad():
        out = module(x)
        if isinstance(result, StaticResult):
            close(out, method.masked(model, result.structure).eval()(x))
            assert measure_macs(module, spec.input_size)["macs"] == count(spec, result.structure).macs
        elif isinstance(result, GeneratedResult):  # input-independent masks: the extracted network
            static = result.to_static()
            close(static.module.eval()(x), out)
            assert measure_macs(static.module, spec.input_size)["macs"] == count(spec, static.structure).macs
        elif isinstance(result, DynamicResult):  # input by input: the dense network with that input's masks
            masks = {n: g.values().detach().clone() for n, g in module.items()}
            dense = strip_gates(copy.deepcopy(module.net))
            for i in range(len(x)):
                ref = GatedModel(dense, {n: FixedGate(v[i]) for n, v in masks.items()}, spec, fuse_bn=False).eval()
                close(ref(x[i:i + 1]), out[i:i + 1])
                strip_gates(dense)
        else:
            raise AssertionError(f"result kind {result.kind} has no output check here")


# --------------------------------------------------------------------------------------------------
# every method on every model


@pytest.mark.parametrize("name,model", CASES)
def test_method_on_model(name, model, tmp_path):
    net, spec = build(model)
    m = methods.create(name, **required_options(name, spec, tmp_path))
    if (name, model) in REFUSED:  # before anything trains, one line that says why and what to set
        with pytest.raises(ConfigError) as e:
            m.check(spec, BUDGET)
        assert "\n" not in str(e.value) and REFUSED[name, model] in str(e.value), str(e.value)
        return
    m.check(spec, BUDGET)
    gated = m.attach(net)
    train(m, gated)
    result, warned = finalized(m, gated, spec)
    assert result.kind == m.result_kind
    check_budget(m, result, spec, warned)
    check_outputs(m, gated, result, spec)


def test_refusals_are_expected_cases():
    """The tables above name registered methods and the models here (a renamed one would go stale)."""
    names = set(methods.list_methods())
    for name, model in [*REFUSED, *XFAIL]:
        assert name in names and model in MODELS, (name, model)


# --------------------------------------------------------------------------------------------------
# what the refusals name works


def test_bar_on_the_slots_the_refusal_names():
    """BAR on the traced ResNet-18 with method.slots: [mid] (the refusal's fix): trained, pruned to the
    budget by closing its weakest gates, compacted to what the masked network computes."""
    net, spec = build("resnet18")
    m = methods.create("bar", slots=["mid"])
    m.check(spec, BUDGET)
    gated = m.attach(net)
    train(m, gated)
    result, warned = finalized(m, gated, spec)
    assert result.report.extra["trimmed_channels"] and result.report.budget_met
    check_budget(m, result, spec, warned)
    check_outputs(m, gated, result, spec)


def test_bar_with_a_residual_branch_pruned_to_zero():
    """BAR (slots: [mid]) on the traced ResNet-18 with every gate of one block's mid closed: dead-branch
    removal (B10) empties the branch, whose compaction the generic engine refuses so far."""
    net, spec = build("resnet18")
    m = methods.create("bar", slots=["mid"])
    m.check(spec, BUDGET)
    gated = m.attach(net)
    train(m, gated)
    with torch.no_grad():
        gated.gate("layer1.0.mid").log_alpha.fill_(-10.0)  # deterministic gate 0 (log alpha < -2.398)
    result, warned = finalized(m, gated, spec)
    assert result.report.extra["removed_branches"] == ["layer1.0"]
    assert result.structure.counts()["layer1.0.delta"] == 0
    check_budget(m, result, spec, warned)
    check_outputs(m, gated, result, spec)


@pytest.mark.parametrize("groups", ["none", "trunk"])
def test_trunk_members_need_one_mask(groups):
    """A selection over every conv output of the traced ResNet-18: refused with groups: none (the
    trunks' members would keep different channels), compacted with groups: trunk."""
    net, spec = build("resnet18")
    m = methods.create("l1", slots=["stem", "mid", "delta", "proj"], groups=groups)
    if groups == "none":
        with pytest.raises(ConfigError, match=r"method l1 with groups: none selects each gated tensor's channels "
                                              r"on its own: .*set method.groups: trunk or method.slots: \['mid'\]"):
            m.check(spec, BUDGET)
        return
    m.check(spec, BUDGET)
    result, warned = finalized(m, net, spec)
    check_budget(m, result, spec, warned)
    check_outputs(m, net, result, spec)


def test_part_of_a_trunk_is_refused():
    net, spec = build("resnet18")
    with pytest.raises(ConfigError, match=r"method random gates layer1.0.delta, layer1.1.delta but not stem: .*"
                                          r"trunk stage1 is added from stem, .*add slots \['stem'\] to method.slots"):
        methods.create("random", slots=["delta"]).check(spec, BUDGET)


def test_gate_values_are_not_folded_into_a_linear():
    """BAR keeps its gate values (zhat) and DDNP extracts from its gated network: compaction folds gate
    values into BatchNorm2d and Conv2d only, so a hidden linear layer (named in method.slots) is refused;
    l1 (a plain structure, nothing folded) prunes it."""
    net, spec = build("catnet")
    assert "linear" not in spec.default_slots("outputs")  # conv outputs only, as in the hand-written specs
    for name in ("bar", "ddnp"):
        with pytest.raises(ConfigError, match=rf"method {name} compacts its gated network.*fc1 \(slot 'linear'\) is "
                                              rf"a Linear's output; drop 'linear' from method.slots \(e.g. "
                                              rf"method.slots: \['stem', 'conv'\]\)"):
            methods.create(name, slots=["stem", "conv", "linear"]).check(spec, BUDGET)
    m = methods.create("l1", slots=["stem", "conv", "linear"])
    m.check(spec, BUDGET)
    result, warned = finalized(m, net, spec)
    assert "fc1" in result.structure.alive  # a hidden linear unit the selection may prune
    check_budget(m, result, spec, warned)
    check_outputs(m, net, result, spec)


def test_slimming_prunes_only_channels_with_a_batchnorm():
    net, spec = build("catnet")
    assert [t.name for t in methods.create("slimming").tensors(spec)] == ["stem", "mix.0"]  # head: conv + bias
    with pytest.raises(ConfigError, match="slimming penalises BatchNorm scales, and no tensor of slots"):
        methods.create("slimming", slots=["linear"]).check(spec, BUDGET)


def test_pfs_on_a_traced_model_is_its_own_reference():
    net, spec = build("catnet")
    m = methods.create("pfs")
    m.check(spec, BUDGET)
    gated = m.attach(net)
    train(m, gated)
    result, _ = finalized(m, gated, spec)
    rep = result.report
    assert rep.extra["reference_network"] == "model" and rep.extra["reference"] == count(spec).macs
    assert rep.rule.endswith("vs the model itself")


# --------------------------------------------------------------------------------------------------
# off the budget: a warning and a record


def test_ddnp_off_its_target_warns_and_records_it():
    """Two search steps leave DDNP's R near 0.95 against p = 0.5: it warns and records off_budget; a
    method made with p = the R it reached does neither."""
    net, spec = build("resnet18")
    m = methods.create("ddnp")
    m.check(spec, BUDGET)
    gated = m.attach(net)
    train(m, gated)
    with pytest.warns(OffBudgetWarning, match=r"ddnp ended off its budget: R 0\.9\d+ against a target of 0\.5 "
                                              r"\(\+\d+\.\d%, outside its tolerance of -4%/\+4%\).*search longer"):
        result = m.finalize(gated, spec, BUDGET)
    off = result.report.extra["off_budget"]
    r = result.report.extra["R_hard"]
    assert off["metric"] == "R" and off["target"] == 0.5 and off["achieved"] == pytest.approx(r) and r > 0.9
    assert result.report.to_dict()["off_budget"] == off  # written to result.json with the report
    reached = methods.create("ddnp", p=round(r, 3))
    reached.check(spec, None)
    reached.log = m.log
    again, warned = finalized(reached, gated, spec, budget=None)
    assert not warned and "off_budget" not in again.report.extra


def test_flag_off_budget_bounds():
    rep = SelectReport("rule", "macs", 100.0, 96.0)
    assert not flag_off_budget("x", rep, "macs", 96.0, 100.0, below=0.05)
    assert not flag_off_budget("x", rep, "macs", 100.0, 100.0, below=0.05)
    assert "off_budget" not in rep.extra
    with pytest.warns(OffBudgetWarning, match=r"x ended off its budget: macs 101 against a target of 100 \(\+1\.0%"):
        assert flag_off_budget("x", rep, "macs", 101.0, 100.0, below=0.05)
    assert rep.extra["off_budget"]["relative_gap"] == pytest.approx(0.01)
    with pytest.warns(OffBudgetWarning, match=r"-6\.0%, outside its tolerance of -5%/\+0%\); .*; raise it"):
        flag_off_budget("x", rep, "macs", 94.0, 100.0, below=0.05, hint="raise it")
