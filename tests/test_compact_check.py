"""Generic compaction that checks itself (issue 27, item 2).

Traced models compact without family code, a residual branch pruned to zero channels included (its
convs become zeros or its BatchNorm's constant, carried into the sum), and ``compact()`` compares its
network with the masked model on a random batch: a network that differs or fails is one
:class:`~prunelab.pruning.compact.CompactionError`, never a return value. BAR on a traced ResNet-18 with
an emptied branch is tests/test_traced_methods.py::test_bar_with_a_residual_branch_pruned_to_zero; every
zoo model on a random structure is tests/test_compact.py.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision.models import mobilenet_v2

from conftest import randomize_bn
from test_traced_describe import NON_ZOO, CatNet, _half_structure
from prunelab import models
from prunelab.counting import count, measure_macs
from prunelab.errors import PrunelabError
from prunelab.pruning import compact as C
from prunelab.pruning.compact import (CompactionError, ConstantOutput, EmptyOutput, compact, expand, load_compact,
                                      save_compact)
from prunelab.pruning.gates import FixedGate, GatedModel, ScalarGate
from prunelab.pruning.structure import Structure

BUILDERS = {"resnet18": NON_ZOO["resnet18"], "mobilenet_v2": lambda: mobilenet_v2(num_classes=10, width_mult=0.25)}


def _traced(which, seed=0):
    torch.manual_seed(seed)
    net = randomize_bn(BUILDERS[which]()).eval()
    return net, models.describe(net, example_input=torch.randn(2, 3, 32, 32))


def _masked(net, spec, structure):
    gates = {n: FixedGate(torch.as_tensor(m, dtype=torch.float32)) for n, m in structure.masks().items()}
    return GatedModel(copy.deepcopy(net), gates, spec, fuse_bn=False).eval()


def _assert_equal_to_masked(small, net, spec, structure):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want, got = _masked(net, spec, structure)(x), small.eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max())))


# which tensor is emptied -> (the op that then writes zeros, the op that then outputs a constant or None)
EMPTIED = {
    ("resnet18", "layer1.0.mid"): ("layer1.0.conv1", "layer1.0.conv2"),  # the branch: BN2's constant remains
    ("resnet18", "layer1.1.delta"): ("layer1.1.conv2", None),  # zeros at the trunk's width
    ("resnet18", "layer2.0.proj"): ("layer2.0.downsample.0", None),  # the projection shortcut
    ("mobilenet_v2", "features.5.conv.mid"): ("features.5.conv.0.0", "features.5.conv.2"),  # + the depthwise conv
    ("mobilenet_v2", "features.6.conv.delta"): ("features.6.conv.2", None),
}


@pytest.mark.parametrize("which,emptied", list(EMPTIED), ids=[f"{m}-{t}" for m, t in EMPTIED])
def test_empty_residual_branch_compacts_to_the_masked_network(which, emptied):
    net, spec = _traced(which)
    assert spec.family == "traced"
    half = _half_structure(spec, np.random.default_rng(0))  # one alive set per residual trunk
    s = half.with_alive({emptied: []})
    small = compact(net, s)  # checked against the masked model inside
    _assert_equal_to_masked(small, net, spec, s)
    zeros, const = EMPTIED[which, emptied]
    assert isinstance(small.get_submodule(zeros), EmptyOutput)
    if const is not None:
        assert isinstance(small.get_submodule(const), ConstantOutput)
        assert small.get_submodule(const).value.abs().max() > 0  # the BN's constant, carried into the sum
    for op in spec.ops:  # the emptied ops' BatchNorms are gone with them
        if op.bn and op.name in (zeros, const):
            assert isinstance(small.get_submodule(op.bn), nn.Identity)
    if emptied.endswith(".mid"):  # the whole branch (a block without its shortcut) holds no conv any more
        block = small.get_submodule(emptied.rsplit(".", 1)[0])
        assert not any(isinstance(m, nn.Conv2d) for n, m in block.named_modules() if "downsample" not in n)
    counted = count(spec, s)
    assert measure_macs(small, spec.input_size)["macs"] == counted.macs < count(spec, half).macs


def test_every_branch_of_a_stage_empty():
    """Both blocks of ResNet-18's first stage lose their branch: the stage is the identity (plus constants)."""
    net, spec = _traced("resnet18")
    s = Structure._make(spec, {"layer1.0.mid": [], "layer1.1.mid": [], "layer1.1.delta": []})
    small = compact(net, s)
    _assert_equal_to_masked(small, net, spec, s)
    assert not any(isinstance(m, nn.Conv2d) for m in small.layer1.modules())


def test_empty_branch_round_trips_through_plan_and_expand(tmp_path):
    """A traced model built from a builder path: the plan rebuilds the same compact network, and
    expand() stores the branch's constant as BN bias, so compacting the expanded model gives it back."""
    net = randomize_bn(models.create("test_traced_describe:_cifar_resnet18")).eval()
    spec = models.describe(net)
    s = _half_structure(spec, np.random.default_rng(1)).with_alive({"layer2.1.mid": [], "layer3.0.proj": []})
    small = compact(net, s).eval()
    x = torch.randn(2, 3, 32, 32)
    save_compact(small, s, tmp_path / "c")
    again = compact(expand(small, s), s).eval()
    with torch.no_grad():
        y = small(x)
        assert torch.equal(load_compact(tmp_path / "c")(x), y)
        torch.testing.assert_close(again(x), y, rtol=1e-5, atol=1e-5)


def test_gate_values_fold_into_a_linear_and_dead_values_are_not_folded(monkeypatch):
    torch.manual_seed(0)
    net = randomize_bn(CatNet()).eval()
    spec = models.describe(net, example_input=torch.randn(2, 3, 32, 32))
    keep = np.arange(0, 16, 2)
    v = torch.zeros(16)
    v[keep] = torch.rand(len(keep)) + 0.5
    gate = ScalarGate(16)
    gate.gate.data.copy_(v)
    gated = GatedModel(copy.deepcopy(net), {"fc1": gate}, spec).eval()
    small = compact(gated).eval()  # checked inside against the dense network with these values
    assert small.fc1.out_features == len(keep)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), gated(x), rtol=1e-4, atol=1e-4)
    # values 1 on every alive channel (0 on the dead ones): nothing to fold

    def refuse(*a):
        raise AssertionError("folded")

    monkeypatch.setattr(C, "_fold_gate", refuse)
    gate.gate.data.copy_((v > 0).float())
    compact(gated)


# --------------------------------------------------------------------------------------------------
# what the check catches


def _error(fn) -> str:
    with pytest.raises(CompactionError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and "family 'traced'" in msg and "check=False" in msg and "report it" in msg, msg
    return msg


def test_a_network_that_differs_is_one_error(monkeypatch):
    net, spec = _traced("resnet18")
    s = _half_structure(spec, np.random.default_rng(0))
    real = C.slice_conv

    def lossy(conv, in_idx=None, out_idx=None):  # a bug: the first kept output channel's weights lost
        new = real(conv, in_idx, out_idx)
        with torch.no_grad():
            new.weight[0].zero_()
        return new

    monkeypatch.setattr(C, "slice_conv", lossy)
    msg = _error(lambda: compact(net, s))
    assert msg.startswith("compact() built a network whose output differs from the masked model's by up to "), msg
    small = compact(net, s, check=False)  # for debugging: the network anyway
    assert isinstance(small, nn.Module)


def test_a_network_that_fails_is_one_error(monkeypatch):
    net, spec = _traced("resnet18")
    s = _half_structure(spec, np.random.default_rng(0))
    real = C.slice_conv

    def short(conv, in_idx=None, out_idx=None):  # a bug: one input channel too few
        new = real(conv, in_idx, out_idx)
        return real(new, torch.arange(new.in_channels - 1)) if new.in_channels > 3 else new

    monkeypatch.setattr(C, "slice_conv", short)
    msg = _error(lambda: compact(net, s))
    assert msg.startswith("compact() built a network whose forward pass fails (RuntimeError: "), msg


def test_trunk_members_with_different_channels(monkeypatch):
    """The issue's finding: a trunk gated without groups: trunk (each member its own channels) gave a
    network that failed on its first forward pass. It is refused before slicing, naming the fix; and
    were that refusal gone, the check would raise instead of returning the network."""
    net, spec = _traced("resnet18")
    s = Structure.random(spec, np.random.default_rng(0), keep=(0.3, 0.7))
    with pytest.raises(PrunelabError, match=r"structure keeps different channels in the members of residual trunk "
                                            r"stage1 \(stem keeps \d+ channels, layer1.0.delta \d+\); compaction of "
                                            r"family 'traced' .* method.groups: trunk"):
        compact(net, s)
    monkeypatch.setattr(C.FamilyCompaction, "check_structure", lambda *a: None)
    assert _error(lambda: compact(net, s)).startswith("compact() built a network whose forward pass fails")


def test_a_disconnecting_structure_is_refused():
    """Only a residual branch may lose every channel: an emptied stem leaves a constant network."""
    net, spec = _traced("resnet18")
    with pytest.raises(PrunelabError, match=r"structure leaves no channel in stem, which disconnects the network at "
                                            r"layer1.0.conv1 \(only a constant reaches fc\)"):
        compact(net, Structure._make(spec, {"stem": []}))


def test_the_check_changes_no_state_and_ignores_autocast():
    """The check draws from its own generator, restores training flags, and compares float32 results
    even when compact() is called under autocast (bfloat16 differs from float32 by more than 1e-4)."""
    net, spec = _traced("resnet18")
    net.train()
    net.layer2.eval()
    s = _half_structure(spec, np.random.default_rng(0)).with_alive({"layer1.0.mid": []})
    start = torch.get_rng_state()
    compact(net, s, check=False)  # building modules draws from the global RNG (their initialisation)
    unchecked = torch.get_rng_state()
    torch.set_rng_state(start)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small = compact(net, s)
    assert torch.equal(torch.get_rng_state(), unchecked)  # the check draws nothing from it
    assert small.training and not small.layer2.training and not small.layer2[0].bn1.training
    assert small.layer1.training and small.layer1[0].bn2.training
    _assert_equal_to_masked(small, net.eval(), spec, s)
