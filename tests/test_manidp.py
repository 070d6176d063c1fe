"""ManiDP's pieces: the schedule, the complexity weight, the similarity loss, the predictors, the
thresholds, and the real dynamic inference path (equal to the masked dense computation)."""

from __future__ import annotations


import pytest
import torch

from prunelab import methods, models
from prunelab.methods.manidp import (DynamicInference, complexity_weight, cosine_matrix, remain_rate,
                                     similarity_loss)


def test_remain_rate_falls_from_about_one_to_the_target():
    e = 10
    assert remain_rate(e - 1, e, 0.6) == pytest.approx(0.6)
    assert remain_rate(-1, e, 0.6) == pytest.approx(1.0)
    rs = [remain_rate(i, e, 0.6) for i in range(e)]
    assert all(a > b for a, b in zip(rs, rs[1:]))


def test_complexity_weight():
    ce = torch.tensor([0.0, 0.5, 1.0, 2.0])
    w = complexity_weight(ce, 1.0)
    assert torch.allclose(w, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert torch.allclose(complexity_weight(ce, 1.0, 2.0), torch.tensor([1.0, 0.25, 0.0, 0.0]))


def test_similarity_loss_is_zero_when_the_matrices_agree_and_grows_otherwise():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(8, 5, generator=g)
    assert similarity_loss(z, 3 * z) == pytest.approx(0.0, abs=1e-7)  # cosine: scale-free
    assert similarity_loss(z, torch.rand(8, 5, generator=g)) > 1e-3
    assert torch.allclose(cosine_matrix(torch.zeros(2, 3)), torch.zeros(2, 2))  # all-zero rows: zeros


def _trained(threshold_quantile=0.5, seed=0):
    torch.manual_seed(seed)
    m = methods.create("manidp")
    net = models.create("resnet20")
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
    gated = m.attach(net)
    with torch.no_grad():
        for _, g in gated.items():  # predictors that differ per input, thresholds that prune
            torch.nn.init.normal_(g.predictor.fc2.weight, std=0.05)
    gated.eval()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    if threshold_quantile is not None:
        with torch.no_grad():
            gated(x)
            for _, g in gated.items():
                # between two observed saliencies, so that float rounding cannot flip a channel
                v = torch.sort(g.last_saliency.flatten()).values
                k = int(threshold_quantile * (len(v) - 1))
                g.threshold.fill_(float((v[k] + v[k + 1]) / 2))
    return m, gated, x


def test_predictors_start_at_saliency_one_and_keep_the_pretrained_function():
    m = methods.create("manidp")
    net = models.create("resnet20").eval()
    gated = m.attach(models.create("resnet20"))
    gated.net.load_state_dict(net.state_dict())
    gated.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = gated(x)
        assert all(torch.all(g.last_saliency == 1) for _, g in gated.items())
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("q", [None, 0.3, 0.7, 0.95])
def test_dynamic_inference_equals_the_masked_computation(q):
    _, gated, x = _trained(q)
    # float64: random predictors amplify float32 rounding differences between the two orders of work
    gated, x = gated.double(), x.double()
    dyn = DynamicInference(gated)
    with torch.no_grad():
        ref = gated(x)
        kept = sum(int(g.alive_per_instance().sum()) for _, g in gated.items())
        out = dyn(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    total = sum(g.channels for _, g in gated.items()) * len(x)
    if q is not None:  # the thresholds prune (without them only channels whose saliency is 0 drop out)
        assert kept < (1 - q / 4) * total


def test_thresholds_follow_the_schedule_and_not_after_the_last_epoch(tmp_path):
    from prunelab.config import TrainConfig
    from prunelab.train.trainer import Trainer

    from test_method_conformance import SyntheticLoader

    m = methods.create("manidp", remain=0.5)
    gated = m.attach(models.create("resnet20"))
    m.prepare(gated.spec, None)
    cfg = TrainConfig(epochs=4, progress=False, channels_last=False, label_smoothing=0.0)
    Trainer(gated, SyntheticLoader(), {}, train_cfg=cfg, hooks=[m], device="cpu").fit()
    th = [r["thresholds"] for r in m.log]
    assert all(t == -1e4 for t in th[0])  # after epoch 0: unpruned
    assert all(t > -1e4 for t in th[1]) and th[2] != th[1]  # set after epochs 1 and 2
    assert th[3] == th[2]  # no update after the last epoch: evaluation uses the trained thresholds
    assert m.log[1]["remain_rate"] == pytest.approx(remain_rate(1, 4, 0.5))
    assert m.c > 0 and m.log[0]["manidp_C"] > 0  # C measured before epoch 0, adapted after each epoch


def test_the_result_reports_predictor_overhead_and_per_instance_costs():
    from prunelab.counting import count

    m, gated, x = _trained(0.5)
    m.prepare(gated.spec, None)
    result = m.finalize(gated, gated.spec, None)
    pred = result.report.extra["predictor_macs"]
    assert pred == sum(g.predictor.macs() for _, g in gated.items()) > 0
    cost = result.cost([(x, None)])
    assert cost.macs < count(gated.spec).macs and cost.per_instance["macs"].shape == (16,)


def test_stacked_similarity_loss_equals_the_per_layer_sum():
    from prunelab.methods.manidp import summed_similarity_loss

    g = torch.Generator().manual_seed(0)
    ds = [torch.randn(8, c, generator=g, requires_grad=True) for c in (4, 4, 6, 4, 6)]
    ss = [torch.rand(8, c, generator=g, requires_grad=True) for c in (4, 4, 6, 4, 6)]
    ref = sum(similarity_loss(d, s) for d, s in zip(ds, ss))
    got = summed_similarity_loss(ds, ss)
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    gr = torch.autograd.grad(ref, ds + ss)
    gg = torch.autograd.grad(got, ds + ss)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(gr, gg))


def test_mask_and_pool_gradients_equal_the_composed_ops():
    """One autograd node for the gate (M16): gradcheck in float64, and the same gradients as the plain ops
    followed by the block's ReLU, in both memory layouts."""
    import torch.nn.functional as F

    from prunelab.methods.manidp import MaskAndPool

    g = torch.Generator().manual_seed(0)
    for channels_last in (False, True):
        for relu in (True, False):
            x = torch.randn(3, 5, 4, 4, dtype=torch.float64, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            m = (torch.rand(3, 5, dtype=torch.float64, generator=g) * (torch.rand(3, 5, generator=g) > 0.3))
            m.requires_grad_(True)
            assert torch.autograd.gradcheck(lambda x, m: MaskAndPool.apply(x, m, relu, True), (x, m))
            z, d = MaskAndPool.apply(x, m, relu, True)
            out = F.relu(z) if relu else z
            ga = torch.autograd.grad(out.sin().sum() + d.cos().sum(), (x, m))
            a = F.relu(x) if relu else x
            out2 = F.relu(x * m[:, :, None, None]) if relu else x * m[:, :, None, None]
            gb = torch.autograd.grad(out2.sin().sum() + a.mean((2, 3)).cos().sum(), (x, m))
            assert torch.allclose(out, out2) and all(torch.allclose(p, q) for p, q in zip(ga, gb))
