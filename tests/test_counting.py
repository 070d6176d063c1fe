"""Cost counter: pinned cross-check values (docs/decisions.md §0.6) and a third-party counter."""

import numpy as np
import pytest
import torch

from prunelab import models
from prunelab.counting import count, measure_macs
from prunelab.pruning.structure import Structure


@pytest.mark.parametrize("name,kw,macs_m,params_m", [
    ("resnet20", {}, 40.55, 0.270),
    ("resnet56", {}, 125.49, 0.853),
    ("resnet56", {"shortcut": "B"}, 125.75, 0.856),
    ("resnet56", {"shortcut": "conv_nobn"}, 125.75, None),
    ("resnet110", {}, 252.89, 1.728),
    ("resnet110", {"shortcut": "B"}, 253.15, 1.731),
    ("vgg16", {}, 313.20, 14.72),
    ("vgg16", {"width": 1.25}, 488.82, None),
    ("bar_wrn", {}, 7543.9, 52.52),
    ("bar_wrn", {"k": 1}, 55.23, 0.370),
    ("bar_wrn", {"k": 2}, 214.35, 1.468),
    ("bar_wrn", {"k": 4}, 845.60, 5.850),
])
def test_cross_check_table(name, kw, macs_m, params_m):
    c = count(models.create(name, **kw))
    assert round(c.macs / 1e6, 2 if macs_m < 1000 else 1) == macs_m
    if params_m is not None:
        assert round(c.params / 1e6, 3 if params_m < 10 else 2) == params_m
    assert c.flops == 2 * c.macs


def test_resnet20_without_bn_and_pfs_pool_convention():
    assert round(count(models.create("resnet20")).params_no_bn / 1e6, 3) == 0.268
    b = models.create("resnet20", shortcut="B")
    assert round(count(b, count_pool=True).macs / 1e6, 2) == 40.82
    assert round(count(b).macs / 1e6, 2) == 40.81
    for e, ref in ((16, 125.75), (20, 196.35), (24, 282.61), (32, 502.11)):  # PFS expansion widths
        assert round(count(models.create("resnet56", shortcut="B", width=e), count_pool=True).macs / 1e6, 2) == ref


def test_bar_wrn_volume_and_uniform_factors():
    m = models.create("bar_wrn")
    spec = models.describe(m)
    c0 = count(spec)
    assert c0.volume == 3_112_960
    assert round(c0.flops / 1e10, 3) == 1.509
    for pf, f_factor in ((2, 3.9998), (4, 15.997), (8, 63.973), (16, 255.77)):
        widths = {t.name: t.channels // pf for t in spec.tensors}
        c = count(spec, widths=widths)
        assert c0.volume / c.volume == pytest.approx(pf)
        assert c0.macs / c.macs == pytest.approx(f_factor, rel=2e-4)
    for k, v0 in ((1, 274_432), (2, 532_480), (4, 1_048_576)):
        assert count(models.create("bar_wrn", k=k)).volume == v0


@pytest.mark.parametrize("name,kw", [("resnet20", {}), ("resnet56", {"shortcut": "B"}), ("vgg16", {}),
                                     ("bar_wrn", {"k": 1}), ("mobilenetv2", {}), ("mobilenetv3_small_imagenet", {})])
def test_agrees_with_ptflops(name, kw):
    ptflops = pytest.importorskip("ptflops")
    m = models.create(name, **kw).eval()
    spec = models.describe(m)
    macs, params = ptflops.get_model_complexity_info(m, spec.input_size, as_strings=False, backend="aten",
                                                     print_per_layer_stat=False, verbose=False)
    c = count(m)
    assert macs == c.macs and params == c.params


def test_masked_conv_formula_and_per_instance_widths():
    m = models.create("resnet20")
    spec = models.describe(m)
    full = count(spec)
    s = Structure.from_counts(spec, {"layer1.0.mid": 8})
    # conv1 loses 8 outputs, conv2 loses 8 inputs: 2 * 9 * 16 * 8 * 32 * 32 MACs
    assert full.macs - count(spec, s).macs == 2 * 9 * 16 * 8 * 1024
    # per-instance widths (dynamic pruning): arrays in, arrays out, each equal to the scalar count
    ks = np.array([16, 8, 4])
    c = count(spec, widths={"layer1.0.mid": ks, "layer2.1.delta": np.array([32, 32, 10])})
    for i in range(3):
        ci = count(spec, widths={"layer1.0.mid": int(ks[i]), "layer2.1.delta": [32, 32, 10][i]})
        assert c.macs[i] == ci.macs and c.volume[i] == ci.volume


def test_regular_vs_mixed_accounting():
    spec = models.describe(models.create("bar_wrn", k=1))
    rng = np.random.default_rng(0)
    s = Structure.random(spec, rng, keep=(0.2, 0.8))
    mixed, regular = count(spec, s, residual="mixed"), count(spec, s, residual="regular")
    assert mixed.volume <= regular.volume and mixed.macs <= regular.macs
    # a structure whose trunk contributors share one mask costs the same both ways
    shared = {}
    for members in spec.trunks().values():
        idx = np.sort(rng.choice(spec.tensor(members[0]).channels, 5, replace=False))
        shared.update({n: idx for n in members})
    s2 = Structure._make(spec, shared)
    assert count(spec, s2, residual="mixed").macs == count(spec, s2, residual="regular").macs


def test_measured_macs_of_dense_model_match_counter():
    m = models.create("resnet56", shortcut="B")
    assert measure_macs(m)["macs"] == count(m).macs


def test_regular_block_has_one_trunk_set_per_stage_and_removed_branches_cost_nothing():
    """B16: x + delta forces one channel set per stage; a removed branch counts 0 in V and MACs."""
    spec = models.describe(models.create("bar_wrn", k=1, blocks_per_stage=3))
    trunk = spec.trunks()["stage1"]  # layer1.0.proj, layer1.{0,1,2}.delta
    assert trunk == ["layer1.0.proj", "layer1.0.delta", "layer1.1.delta", "layer1.2.delta"]
    alive = {"layer1.0.proj": [0, 1, 2, 3], "layer1.0.delta": [4, 5, 6, 7], "layer1.1.delta": [8, 9],
             # block 2's branch is removed (empty mid): its delta set must not widen the trunk
             "layer1.2.mid": [], "layer1.2.delta": [12, 13, 14, 15]}
    s = Structure._make(spec, alive)
    area = spec.tensor("layer1.0.proj").area
    reg = {t["name"]: t for t in count(spec, s, residual="regular").per_tensor}
    mix = {t["name"]: t for t in count(spec, s, residual="mixed").per_tensor}
    for n in ("layer1.0.proj", "layer1.0.delta", "layer1.1.delta"):  # the stage's one set: 4 + 4 + 2 channels
        assert reg[n]["alive"] == 10 and reg[n]["volume"] == 10 * area
    assert reg["layer1.2.delta"]["volume"] == 0  # removed branch: no phantom delta at trunk width
    assert mix["layer1.0.delta"]["alive"] == 4 and mix["layer1.2.delta"]["alive"] == 4
    # every conv reading the stage-1 trunk reads the 10 channels in regular accounting
    ops = {o["name"]: o for o in count(spec, s, residual="regular").per_op}
    for name in ("layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"):
        assert ops[name]["n_in"] == 10, name
    # the removed branch's convs cost nothing in either accounting
    assert ops["layer1.2.conv2"]["macs"] == 0 and ops["layer1.2.conv1"]["macs"] == 0
    # mixed: layer1.1.conv1 reads the union of what reached it (proj and delta 0: 8 channels)
    mops = {o["name"]: o for o in count(spec, s, residual="mixed").per_op}
    assert mops["layer1.1.conv1"]["n_in"] == 8


TORCHVISION = ("resnet18", "mobilenet_v2", "vgg11_bn", "efficientnet_b0", "densenet121", "squeezenet1_1", "mnasnet0_5")


@pytest.mark.parametrize("name", TORCHVISION)
def test_traced_torchvision_models_agree_with_ptflops(name):
    """Counting on traced descriptions (issue 27 item 7) equals ptflops' aten backend exactly. Conventions:
    both count conv and linear multiply-accumulates only (ptflops' aten backend counts aten.convolution and
    the matrix products; BN, activations, pooling and additions are not MACs in either); params are every
    parameter of the model (BN affine included) in both. ptflops' ``pytorch`` backend would add BN, ReLU and
    pooling operations, so it is not the one compared."""
    ptflops = pytest.importorskip("ptflops")
    torchvision = pytest.importorskip("torchvision")
    m = getattr(torchvision.models, name)(num_classes=10).eval()
    size = (3, 64, 64)
    spec = models.describe(m, example_input=torch.randn(1, *size))
    macs, params = ptflops.get_model_complexity_info(m, size, as_strings=False, backend="aten",
                                                     print_per_layer_stat=False, verbose=False)
    c = count(spec)
    assert c.macs == macs and c.params == params == sum(p.numel() for p in m.parameters())
