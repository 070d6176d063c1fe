"""VQ and ID (BAR's reconstruction baselines, docs/decisions.md L7/L8): the compact network equals the masked
network with the reconstructed next layer, the reconstruction is exact where it should be (duplicate
channels for VQ, a rank-deficient layer for ID) and matters (``reconstruct: false`` is worse), unsupported
slots are refused, and a ci pipeline meets half the MACs.

The imports below register both methods, so that the conformance suite (tests/test_method_conformance.py)
covers them when this file is collected first or the package imports them.
"""

from __future__ import annotations

import prunelab.methods.interp_decomp  # noqa: F401  (registration)
import prunelab.methods.vq  # noqa: F401  (registration)

import numpy as np
import pytest
import torch

from prunelab import methods, models
from prunelab.errors import ConfigError
from prunelab.methods.interp_decomp import interpolation_matrix, pivoted_qr
from prunelab.methods.vq import kmeans
from prunelab.pruning.budget import Budget
from test_method_conformance import SyntheticLoader, small_net

BUDGET = Budget("macs", 0.5)
LAYER = "layer1.1.mid"


def prepared(name, net, **options):
    m = methods.create(name, **options)
    spec = models.describe(net)
    m.prepare(spec, BUDGET)
    if name == "id":
        m.collect(net, SyntheticLoader())
    return m, spec


def inputs(seed=3):
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["vq", "id"])
def test_compact_equals_the_masked_network_with_the_reconstructed_next_layer(name):
    net = small_net().eval()
    m, spec = prepared(name, net)
    result = m.finalize(net, spec, BUDGET)
    x = inputs()
    with torch.no_grad():
        out = result.module.eval()(x)
        torch.testing.assert_close(out, m.masked(net, result.structure).eval()(x), rtol=1e-5, atol=1e-5)
        # the reconstruction did change the next layer: the plain masked network differs
        plain = methods.create(name, reconstruct=False)
        plain.spec = spec
        assert (out - plain.masked(net, result.structure).eval()(x)).abs().max() > 1e-3
    assert result.report.extra["reconstruct"] is True


def _conv_bn(net, name):
    p = name.rsplit(".", 1)[0]
    return net.get_submodule(f"{p}.conv1"), net.get_submodule(f"{p}.bn1")


def _copy_channel(net, src, dst, scale):
    """Channel ``dst`` of LAYER := ``scale`` * channel ``src`` after ReLU(BN(conv)) (scale > 0)."""
    conv, bn = _conv_bn(net, LAYER)
    with torch.no_grad():
        conv.weight[dst] = conv.weight[src]
        bn.running_mean[dst] = bn.running_mean[src]
        bn.running_var[dst] = bn.running_var[src]
        bn.weight[dst] = scale * bn.weight[src]
        bn.bias[dst] = scale * bn.bias[src]


def _errors(name, net, **options):
    """Max output error of pruning one channel of LAYER, with and without the reconstruction."""
    x = inputs()
    with torch.no_grad():
        dense = net.eval()(x)
    errs, kept = [], None
    for rec in (True, False):
        m, spec = prepared(name, net, reconstruct=rec, **options)
        c = spec.tensor(LAYER).channels
        s = m.build(net, spec, {LAYER: c - 1})
        assert s.counts()[LAYER] == c - 1 and all(s.counts()[n] == spec.tensor(n).channels for n in s.counts()
                                                   if n != LAYER)
        kept = set(s.alive[LAYER].tolist()) if kept is None else kept
        assert set(s.alive[LAYER].tolist()) == kept
        with torch.no_grad():
            errs.append(float((m.hard_prune(net, s).eval()(x) - dense).abs().max()))
    return errs, kept


def test_vq_merges_a_duplicate_channel_without_changing_the_output():
    net = small_net()
    _copy_channel(net, 3, 7, 1.0)
    (with_rec, without), kept = _errors("vq", net)
    assert len({3, 7} & kept) == 1  # one of the duplicates was removed, the other represents both
    assert with_rec <= 1e-5, with_rec
    assert without > 1e-4 and without > 1000 * with_rec  # the dense output is ~0.35 at most


def test_vq_ranks_duplicates_lowest_for_the_solver():
    net = small_net()
    _copy_channel(net, 3, 7, 1.0)
    m, spec = prepared("vq", net)
    s = m.scores(net, spec)[LAYER]
    assert s[3] == s[7] == 0 and (np.delete(s, [3, 7]) > 0).all()


def test_id_removes_a_linearly_dependent_channel_without_changing_the_output():
    net = small_net()
    _copy_channel(net, 3, 7, 2.0)  # ReLU(2 z) = 2 ReLU(z): channel 7 = 2 * channel 3 after the ReLU
    (with_rec, without), kept = _errors("id", net)
    assert len({3, 7} & kept) == 1
    assert with_rec <= 1e-4, with_rec
    assert without > 1e-4 and without > 1000 * with_rec  # the dense output is ~0.35 at most


def test_pivoted_qr_of_the_gram_equals_that_of_the_activations():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(500, 6, generator=g, dtype=torch.float64).numpy() * np.array([1, 5, 2, 0.1, 3, 1])
    a[:, 4] = a[:, 0] + 2 * a[:, 2]
    import scipy.linalg

    _, r, piv = scipy.linalg.qr(a, mode="economic", pivoting=True)
    piv2, r2 = pivoted_qr(a.T @ a)
    assert list(piv2) == list(piv)
    np.testing.assert_allclose(r2, np.abs(np.diag(r)), rtol=1e-6, atol=1e-6)
    t = interpolation_matrix(a.T @ a, np.sort(piv[:5]))
    np.testing.assert_allclose(a[:, np.sort(piv[:5])] @ t, a, atol=1e-8)


def test_kmeans_gives_exactly_k_clusters():
    x = np.repeat(np.eye(3), [4, 1, 1], axis=0)  # 4 copies of one point: more clusters than distinct points
    labels, _ = kmeans(x, 5)
    assert len(np.unique(labels)) == 5


@pytest.mark.parametrize("name", ["vq", "id"])
def test_slots_not_read_by_one_conv_are_refused(name):
    spec = models.describe(small_net())
    with pytest.raises(ConfigError, match=r"read by exactly one conv.*method\.slots"):
        methods.create(name, slots=["delta"]).check(spec, BUDGET)


def test_id_without_activations_names_the_learn_stage():
    net = small_net()
    m = methods.create("id")
    spec = models.describe(net)
    m.prepare(spec, BUDGET)
    with pytest.raises(ConfigError, match="stages.learn.enabled=true"):
        m.finalize(net, spec, BUDGET)


@pytest.mark.parametrize("name", ["vq", "id"])
def test_pipeline_at_ci_scale_meets_half_the_macs(name, tmp_path):
    from prunelab.config import load_config
    from prunelab.workflows import run_pipeline

    sets = [f"method.name={name}", "stages.finetune.enabled=false", "train.progress=false"]
    if name == "id":
        sets += ["method.batches=2", "stages.learn.enabled=true"]
    cfg = load_config("resnet20_l1", "ci", sets)
    res = run_pipeline(cfg, tmp_path / name, quiet=True)
    rep = res["budget_report"]
    assert rep["within_tolerance"] and rep["achieved"] <= rep["target"]
    assert (rep["target"] - rep["achieved"]) / rep["target"] <= methods.get(name).budget_tolerance
    assert res["pruned_cost"]["mixed"]["macs"] == rep["achieved"]
    if name == "id":
        assert rep["scored_images"] == 2 * cfg.data.batch_size
        learn = torch.load(tmp_path / name / "learn.pt", weights_only=True)
        assert set(learn["method_state"]["grams"]) == {t.name for t in methods.get(name)().tensors(
            models.describe(models.create("resnet20")))}
