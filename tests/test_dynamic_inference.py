"""The fast dynamic inference path (prunelab.pruning.dynamic_inference) equals the masked gated network."""

from __future__ import annotations

import pytest
import torch

from prunelab import methods, models
from prunelab.errors import ConfigError
from prunelab.pruning.dynamic_inference import DynamicInference


def _gated(seed=0, keep=0.6, empty=()):
    """ResNet-20 with random ManiDP predictors and BN statistics, in float64 (random predictors amplify
    float32 rounding differences between the two orders of work). Each threshold lies between two
    saliencies of the inputs (set gate by gate, so each sees its upstream pruned: no ties); the gates
    named in ``empty`` keep nothing (saliencies never exceed 1000); ``keep=None``: no threshold set (only the
    channels whose saliency is 0 drop out)."""
    torch.manual_seed(seed)
    net = models.create("resnet20")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.2, 0.2)
    gated = methods.create("manidp", predictor_init="small", predictor_init_std=0.05).attach(net).double().eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        for name, g in gated.items():
            if keep is None:
                break
            if name in empty:
                g.threshold.fill_(2000.0)
                continue
            gated(x)
            v = torch.sort(g.last_saliency.flatten()).values
            k = int((1 - keep) * (len(v) - 1))
            g.threshold.fill_(float((v[k] + v[k + 1]) / 2))
    return gated, x


CASES = {"pruned": {}, "no threshold": {"keep": None}, "empty conv_a": {"empty": ("layer2.1.mid",)},
         "empty conv_a and conv_b": {"empty": ("layer1.0.mid", "layer3.2.delta")}}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 5])
def test_equals_the_masked_network(batch, case):
    gated, x = _gated(**CASES[case])
    empty = CASES[case].get("empty", ())
    x = x[:batch]
    dyn = DynamicInference(gated)
    with torch.no_grad():
        ref = gated(x)
        kept = {n: g.alive_per_instance().sum(1) for n, g in gated.items()}
        out = dyn(x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # the thresholds prune, differently per input, and the named layers keep nothing
    total = sum(g.channels for _, g in gated.items()) * batch
    if case == "no threshold":  # layers that keep every channel for every input (no gathers in the batch path)
        assert sum(int(k.min()) == gated.gate(n).channels for n, k in kept.items()) >= 5
        return
    assert sum(int(k.sum()) for k in kept.values()) < 0.7 * total
    assert all(int(kept[n].sum()) == 0 for n in empty)
    if batch > 1:
        assert any(len(set(k.tolist())) > 1 for k in kept.values())


def test_the_python_path_equals_the_scripted_one():
    gated, x = _gated(empty=("layer2.1.mid",))
    assert isinstance(DynamicInference(gated)._one, torch.jit.ScriptFunction)  # the fast path compiles
    with torch.no_grad():
        for i in range(3):
            torch.testing.assert_close(DynamicInference(gated, script=False)(x[i:i + 1]),
                                       DynamicInference(gated)(x[i:i + 1]), rtol=1e-12, atol=1e-12)


def test_float32_is_close_to_the_masked_network():
    gated, x = _gated()
    gated, x = gated.float(), x.float()
    with torch.no_grad():
        ref = gated(x[:2])
        for i in range(2):
            torch.testing.assert_close(DynamicInference(gated)(x[i:i + 1]), ref[i:i + 1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", [("resnet20", {"shortcut": "B"}), ("resnet20", {"shortcut": "conv_nobn"}),
                                   ("vgg16", {})])
def test_refuses_projection_shortcuts_and_other_models(model):
    name, kwargs = model
    gated = methods.create("manidp").attach(models.create(name, **kwargs))
    with pytest.raises(ConfigError, match="CIFAR ResNets with option-A or identity shortcuts"):
        DynamicInference(gated)
