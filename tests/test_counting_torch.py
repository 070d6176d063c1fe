"""Differentiable counter: torch widths give the integer counts and gradients to the widths."""

import numpy as np
import pytest
import torch

from prunelab import models
from prunelab.counting import count, soft_cost

FIELDS = ("macs", "flops", "params", "params_no_bn", "volume")
_SPECS: dict = {}


def spec_of(name, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _SPECS:
        _SPECS[key] = models.describe(models.create(name, **kw))
    return _SPECS[key]


def random_widths(spec, seed):
    rng = np.random.default_rng(seed)
    return {t.name: int(rng.integers(1, t.channels + 1)) for t in spec.tensors}


def dense_op_coefficient(spec, name):
    """d MACs / d width(name) with every other tensor at full width, read off the ops directly."""
    coef = 0
    for op in spec.ops:
        hw, kk = op.out_hw[0] * op.out_hw[1], op.kernel[0] * op.kernel[1]
        if op.writes == name and not op.depthwise:
            coef += kk * op.in_channels * hw + (hw if op.bias else 0)
        if name in op.reads and not op.depthwise:
            coef += kk * op.out_channels * hw
    return coef


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("residual", ["mixed", "regular"])
def test_float_widths_equal_integer_counts_on_every_model(name, residual):
    spec = spec_of(name)
    ints = random_widths(spec, seed=len(name))
    ref = count(spec, widths=ints, residual=residual)
    soft = {k: torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for k, v in ints.items()}
    c = count(spec, widths=soft, residual=residual)
    for f in FIELDS:
        v, r = getattr(c, f), getattr(ref, f)
        assert isinstance(v, torch.Tensor) and v.shape == () and v.dtype == torch.float64, f
        assert not isinstance(r, torch.Tensor)
        assert v.item() == r, (f, v.item(), r)
    assert soft_cost(spec, soft, "flops", residual).item() == ref.flops
    # gradients reach every width; V grows by a tensor's area per channel in mixed accounting
    grads = torch.autograd.grad(c.macs + c.volume, list(soft.values()), retain_graph=True)
    assert all(torch.isfinite(g) and g >= 0 for g in grads)
    if residual == "mixed":
        gv = torch.autograd.grad(c.volume, list(soft.values()))
        assert [g.item() for g in gv] == [spec.tensor(k).area for k in soft]
    # float32 widths: same counts to float32 rounding
    c32 = count(spec, widths={k: torch.tensor(float(v)) for k, v in ints.items()}, residual=residual)
    assert c32.macs.dtype == torch.float32
    assert c32.macs.item() == pytest.approx(ref.macs, rel=1e-5)


@pytest.mark.parametrize("residual", ["mixed", "regular"])
def test_per_instance_widths_equal_numpy_arrays(residual):
    spec = spec_of("bar_wrn", k=1)
    rng = np.random.default_rng(3)
    per = {t.name: rng.integers(1, t.channels + 1, size=5) for t in spec.tensors[::2]}
    ref = count(spec, widths=per, residual=residual)
    soft = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in per.items()}
    c = count(spec, widths=soft, residual=residual)
    for f in FIELDS:
        assert getattr(c, f).shape == (5,)
        np.testing.assert_array_equal(getattr(c, f).detach().numpy(), getattr(ref, f))
    # a scalar width broadcasts against per-instance ones (numpy path too)
    first = spec.tensors[0].name
    mixed_shapes = dict(per, **{first: 7})
    ref2 = count(spec, widths=mixed_shapes, residual=residual)
    c2 = count(spec, widths=dict(soft, **{first: torch.tensor(7.0, dtype=torch.float64)}), residual=residual)
    np.testing.assert_array_equal(c2.macs.detach().numpy(), ref2.macs)
    # each instance's gradient depends only on its own widths (a mid: in regular accounting a trunk
    # member's own width only matters when it is the trunk's widest)
    name = next(t.name for t in spec.tensors[::2] if t.slot == "mid")
    g = torch.autograd.grad(c.macs[2], soft[name])[0]
    assert g[2] > 0 and torch.all(g[[0, 1, 3, 4]] == 0)


def test_integer_and_numpy_widths_unchanged():
    spec = spec_of("resnet20")
    assert type(count(spec).macs) is int
    c = count(spec, widths={"layer1.0.mid": 8})  # numpy integer scalars, as before
    assert isinstance(c.macs, (int, np.integer)) and not isinstance(c.macs, torch.Tensor)
    assert c.macs == count(spec).macs - 8 * dense_op_coefficient(spec, "layer1.0.mid")
    c = count(spec, widths={"layer1.0.mid": np.array([8, 16])})
    assert isinstance(c.macs, np.ndarray) and not isinstance(c.macs, torch.Tensor)
    # integer torch tensors take the torch path (float64, exact)
    t = count(spec, widths={"layer1.0.mid": torch.tensor([8, 16])})
    assert t.macs.dtype == torch.float64 and t.macs.tolist() == c.macs.tolist()


def test_gradient_of_mid_width_is_macs_of_the_two_convs_per_channel():
    spec = spec_of("resnet20")
    name = "layer2.1.mid"
    coef = dense_op_coefficient(spec, name)
    assert coef == 2 * 9 * 32 * 16 * 16  # conv1: 9*32*(16x16) per output, conv2: 9*32*(16x16) per input
    w = torch.tensor(13.0, requires_grad=True)
    for metric, expect in (("macs", coef), ("flops", 2 * coef), ("volume", spec.tensor(name).area),
                           ("params", 2 * 9 * 32 + 2), ("params_no_bn", 2 * 9 * 32)):
        for residual in ("mixed", "regular"):
            (g,) = torch.autograd.grad(soft_cost(spec, {name: w}, metric, residual), w)
            assert g.item() == expect, (metric, residual)
    # a finite difference of the integer counter agrees
    fd = count(spec, widths={name: 14}).macs - count(spec, widths={name: 13}).macs
    assert fd == coef


@pytest.mark.parametrize("name,kw", [("resnet20", {}), ("bar_wrn", {"k": 1}), ("mobilenetv2", {}),
                                     ("mobilenetv3_small_imagenet", {})])
@pytest.mark.parametrize("residual", ["mixed", "regular"])
def test_gradients_match_finite_differences(name, kw, residual):
    spec = spec_of(name, **kw)
    rng = np.random.default_rng(1)
    base = {t.name: float(rng.uniform(1, t.channels)) for t in spec.tensors}  # no ties (a.s.)
    names = [spec.tensors[i].name for i in rng.choice(len(spec.tensors), 6, replace=False)]
    soft = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in base.items()}
    for metric in ("flops", "params", "volume"):
        grads = torch.autograd.grad(soft_cost(spec, soft, metric, residual), [soft[n] for n in names])
        h = 1e-3
        for n, g in zip(names, grads):
            up = soft_cost(spec, dict(base, **{n: base[n] + h}), metric, residual).item()
            dn = soft_cost(spec, dict(base, **{n: base[n] - h}), metric, residual).item()
            assert g.item() == pytest.approx((up - dn) / (2 * h), rel=1e-6, abs=1e-6), (metric, n)


def test_regular_union_routes_gradient_to_widest_contributor():
    spec = spec_of("bar_wrn", k=1)
    t = next(t for t in spec.tensors if len(t.block_input) >= 2)
    # a regular block's trunk is one channel set per stage: the union of all the stage's contributors
    contributors = [n for n in spec.trunks()[t.trunk] if n != t.name] + [t.name]
    area = t.area

    def grads(values):
        ws = {n: torch.tensor(float(v), requires_grad=True) for n, v in zip(contributors, values)}
        c = count(spec, widths=ws, residual="regular")
        v = next(r for r in c.per_tensor if r["name"] == t.name)["volume"]
        assert v.item() == area * max(values)
        return [g.item() for g in torch.autograd.grad(v, list(ws.values()))]

    k = len(contributors)
    for widest in range(k):
        values = [3 + i for i in range(k)]
        values[widest], values[-1] = values[-1], values[widest]
        expect = [0.0] * k
        expect[widest] = float(area)
        assert grads(values) == expect
    # mixed accounting: the delta's own width only
    ws = {n: torch.tensor(5.0, requires_grad=True) for n in contributors}
    ws[contributors[0]] = torch.tensor(9.0, requires_grad=True)
    v = next(r for r in count(spec, widths=ws).per_tensor if r["name"] == t.name)["volume"]
    g = torch.autograd.grad(v, list(ws.values()), allow_unused=True)
    assert [0.0 if x is None else x.item() for x in g] == [0.0] * (k - 1) + [float(area)]
    # and the trunk union a conv reads also goes to the widest
    op = next(o for o in spec.ops if len(o.reads) >= 2)
    ws = {n: torch.tensor(float(2 + i), requires_grad=True) for i, n in enumerate(op.reads)}
    m = next(r for r in count(spec, widths=ws).per_op if r["name"] == op.name)["macs"]
    g = [x.item() for x in torch.autograd.grad(m, list(ws.values()))]
    assert g[-1] > 0 and all(x == 0 for x in g[:-1])


def test_logsumexp_union_is_smooth_upper_bound():
    spec = spec_of("bar_wrn", k=1)
    ints = random_widths(spec, seed=5)
    exact = count(spec, widths=ints, residual="regular").macs
    soft = {k: torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for k, v in ints.items()}
    lse = soft_cost(spec, soft, "macs", "regular", union="logsumexp", union_temperature=0.5)
    assert lse.item() > exact
    cold = soft_cost(spec, soft, "macs", "regular", union="logsumexp", union_temperature=1e-3)
    assert cold.item() == pytest.approx(exact, rel=1e-4)
    grads = torch.autograd.grad(lse, list(soft.values()))
    assert all(g > 0 for g in grads)  # every contributor of a union gets some gradient
    with pytest.raises(ValueError, match="union"):
        count(spec, widths=soft, union="softmax")


def test_bad_inputs_raise_value_error():
    spec = spec_of("resnet20")
    w = {"layer1.0.mid": torch.tensor(4.0)}
    with pytest.raises(ValueError, match="metric"):
        soft_cost(spec, w, "latency")
    with pytest.raises(ValueError, match="layer1.0.mdi"):
        soft_cost(spec, {"layer1.0.mdi": torch.tensor(4.0)})
    with pytest.raises(ValueError, match="gated tensor"):
        count(spec, widths={"nope": torch.tensor(4.0)})
    with pytest.raises(KeyError):  # still an UnknownNameError for existing callers
        count(spec, widths={"nope": 4})
    with pytest.raises(ValueError, match="broadcast"):
        count(spec, widths={"layer1.0.mid": torch.ones(3), "layer1.1.mid": torch.ones(4)})
    with pytest.raises(ValueError, match="residual"):
        soft_cost(spec, w, "macs", residual="dense")


def test_soft_cost_without_tensors_and_reporting():
    spec = spec_of("resnet20")
    dense = soft_cost(spec, {}, "macs")
    assert isinstance(dense, torch.Tensor) and dense.item() == count(spec).macs
    assert soft_cost(spec, {"layer1.0.mid": 8}, "volume").item() == count(spec, widths={"layer1.0.mid": 8}).volume
    c = count(spec, widths={"layer1.0.mid": torch.tensor([8.0, 16.0], dtype=torch.float64,
                                                                      requires_grad=True)})
    assert "MACs" in str(c) and c.as_dict()["macs"] == [float(x) for x in
                                                       count(spec, widths={"layer1.0.mid": np.array([8, 16])}).macs]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_widths_stay_on_device():
    spec = spec_of("resnet20")
    w = {t.name: torch.tensor(float(t.channels // 2), device="cuda", requires_grad=True) for t in spec.tensors}
    c = count(spec, widths=w, residual="regular")
    assert c.macs.device.type == "cuda" and c.volume.device.type == "cuda"
    assert c.macs.item() == count(spec, widths={k: t.channels // 2 for k, t in
                                                ((t.name, t) for t in spec.tensors)}).macs
    (g,) = torch.autograd.grad(c.flops, [w["layer1.0.mid"]])
    assert g.device.type == "cuda" and g.item() > 0
