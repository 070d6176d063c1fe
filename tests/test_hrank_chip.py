"""HRank and CHIP: the scores against slow references, what they rank low, their cache, and a ci pipeline.

The import below registers both methods, so that the conformance suites (tests/test_method_conformance.py,
tests/test_traced_methods.py), which parametrise over ``methods.list_methods()``, cover them when this
file is collected first or the package imports them.
"""

from __future__ import annotations

import prunelab.methods.chip  # noqa: F401  (registration)
import prunelab.methods.hrank  # noqa: F401  (registration)

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunelab import methods, models
from prunelab.data.loader import CifarLoader
from prunelab.errors import ConfigError
from prunelab.methods.chip import channel_independence
from prunelab.methods.hrank import scoring_batches
from prunelab.pruning.budget import Budget
from test_method_conformance import SyntheticLoader, small_net

BUDGET = Budget("macs", 0.5)


def feature_maps(net, spec, names, loader):
    """``{name: [ReLU(gated module output) per batch]}`` of ``net`` in eval mode: what the methods score."""
    maps = {n: [] for n in names}
    hooks = [net.get_submodule(spec.tensor(n).module).register_forward_hook(
        lambda m, i, out, n=n: maps[n].append(F.relu(out).detach().clone())) for n in names]
    net.eval()
    with torch.no_grad():
        for x, *_ in loader:
            net(x)
    for h in hooks:
        h.remove()
    return maps


def collected(name, net, loader, **options):
    m = methods.create(name, **options)
    spec = models.describe(net)
    m.prepare(spec, BUDGET)
    return m, spec, m.collect(net, loader)


def test_both_registered_with_their_options():
    assert {"hrank", "chip"} <= set(methods.list_methods())
    assert methods.create("hrank").config() == {"name": "hrank", "slots": None, "mode": "global", "min_channels": 1,
                                                "groups": "none", "batches": 5, "normalize": "mean",
                                                "activation": "relu"}
    with pytest.raises(ConfigError, match="batches must be >= 1"):
        methods.create("chip", batches=0)


# --------------------------------------------------------------------------------------------------
# HRank


def test_hrank_equals_a_loop_of_matrix_rank_per_map():
    net = small_net()
    loader = SyntheticLoader(n_batches=2, batch=3)
    m, spec, raw = collected("hrank", net, loader)
    names = [t.name for t in m.tensors(spec)]
    assert set(raw) == set(names) and m.images == 6
    maps = feature_maps(net, spec, names, loader)
    for n in names:
        x = torch.cat(maps[n])  # (6, C, H, W)
        ref = np.array([[torch.linalg.matrix_rank(x[i, c]).item() for c in range(x.shape[1])]
                        for i in range(len(x))], dtype=np.float64).mean(0)
        np.testing.assert_array_equal(raw[n], ref)
        assert raw[n].max() <= min(x.shape[2:])


def test_hrank_ranks_a_rank_one_channel_below_full_rank_ones():
    net = small_net()
    bn = net.get_submodule("layer1.0.bn1")  # layer1.0.mid
    with torch.no_grad():
        bn.weight[3], bn.bias[3] = 0.0, 1.0  # a constant map of 1 after the ReLU: rank 1
        bn.weight[5], bn.bias[5] = 0.0, -1.0  # all zero after the ReLU: rank 0
    _, _, raw = collected("hrank", net, SyntheticLoader(n_batches=1, batch=4))
    s = raw["layer1.0.mid"]
    assert s[3] == 1.0 and s[5] == 0.0
    others = np.delete(s, [3, 5])
    assert (others > 1.0).all(), s


# --------------------------------------------------------------------------------------------------
# CHIP


def slow_ci(a: torch.Tensor) -> torch.Tensor:
    """The official definition, one channel at a time: ||A_n||_* - ||A_n, row c zeroed||_* (float64)."""
    a = a.double()
    out = torch.zeros(a.shape[:2], dtype=torch.float64)
    for i in range(a.shape[0]):
        full = torch.linalg.matrix_norm(a[i], ord="nuc")
        for c in range(a.shape[1]):
            b = a[i].clone()
            b[c] = 0
            out[i, c] = full - torch.linalg.matrix_norm(b, ord="nuc")
    return out


@pytest.mark.parametrize("c,p", [(6, 20), (12, 5), (8, 8)])  # both Gram forms: C <= H*W and C > H*W
def test_channel_independence_equals_the_per_channel_loop(c, p):
    g = torch.Generator().manual_seed(c * 100 + p)
    a = F.relu(torch.randn(5, c, p, generator=g, dtype=torch.float64))
    a[:, 1] = 0  # a dead channel
    ref = slow_ci(a)
    torch.testing.assert_close(channel_independence(a), ref, rtol=1e-10, atol=1e-12)
    # chunked over images (one image per chunk): the same numbers
    torch.testing.assert_close(channel_independence(a, chunk_elements=1), ref, rtol=1e-10, atol=1e-12)
    assert channel_independence(a)[:, 1].abs().max() < 1e-12 * ref.abs().max()  # zeroing a zero row: no change


def test_chip_equals_a_loop_of_nuclear_norms_on_a_network():
    net = small_net()
    loader = SyntheticLoader(n_batches=2, batch=2)
    m, spec, raw = collected("chip", net, loader)
    names = [t.name for t in m.tensors(spec)]
    maps = feature_maps(net, spec, names, loader)
    for n in names:
        x = torch.cat(maps[n])
        ref = slow_ci(x.reshape(x.shape[0], x.shape[1], -1)).mean(0).numpy()
        np.testing.assert_allclose(raw[n], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_chip_a_copied_row_is_less_independent_than_an_independent_one():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 8, 256, generator=g, dtype=torch.float64)
    a[:, 1] = a[:, 0]  # an exact copy
    ci = channel_independence(a)
    assert (ci[:, :2] < ci[:, 2:].min(1, keepdim=True).values).all()


def test_chip_ranks_a_copied_channel_below_an_independent_one_in_a_network():
    net = small_net()
    conv, bn = net.get_submodule("layer1.0.conv1"), net.get_submodule("layer1.0.bn1")
    with torch.no_grad():
        conv.weight[1] = conv.weight[0]  # channel 1: an exact copy of channel 0
        conv.weight[2] = torch.randn(conv.weight[2].shape, generator=torch.Generator().manual_seed(5)) \
            * conv.weight[0].std()  # channel 2: independent, at channel 0's scale and BN
        for c in (1, 2):
            bn.weight[c], bn.bias[c] = bn.weight[0], bn.bias[0]
            bn.running_mean[c], bn.running_var[c] = bn.running_mean[0], bn.running_var[0]
    _, _, raw = collected("chip", net, SyntheticLoader(n_batches=1, batch=4))
    s = raw["layer1.0.mid"]
    assert s[1] == pytest.approx(s[0]) and s[1] < s[2], s


# --------------------------------------------------------------------------------------------------
# both: data, cache, selection


def test_scoring_images_are_the_first_batches_unaugmented():
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    loader = CifarLoader(images, g.integers(0, 10, 40), batch_size=16, train=True, channels_last=False)
    got = list(scoring_batches(loader, 5))
    assert [len(x) for x, _ in got] == [16, 16, 8] and all(whole for _, whole in got)
    order = loader.order(0)
    torch.testing.assert_close(torch.cat([x for x, _ in got]), loader.normalize(loader.images[order]))
    assert len(list(scoring_batches(loader, 1))) == 1


@pytest.mark.parametrize("name", ["hrank", "chip"])
def test_selection_reuses_the_cached_scores_at_any_budget(name, monkeypatch):
    net = small_net()
    m, spec, raw = collected(name, net, SyntheticLoader(n_batches=1, batch=2))
    monkeypatch.setattr(type(m), "channel_scores", lambda *a: pytest.fail("scored again"))
    dense = models_cost(spec)
    for keep in (0.3, 0.7):
        r = m.finalize(net, spec, Budget("macs", keep))
        assert 0 <= (keep * dense - r.report.achieved) / (keep * dense) <= m.budget_tolerance
        assert r.report.extra["scored_images"] == 2
    # normalize: mean (l1's convention): each layer's scores divided by their mean
    s = m.scores(net, spec)
    for n, v in raw.items():
        np.testing.assert_allclose(s[n], v / v.mean())


def test_selection_without_scores_names_the_learn_stage():
    net = small_net()
    m = methods.create("hrank")
    with pytest.raises(ConfigError, match=r"stages.learn.enabled=true"):
        m.finalize(net, models.describe(net), BUDGET)


def models_cost(spec):
    from prunelab.counting import count

    return count(spec).macs


@pytest.mark.parametrize("name,batches", [("hrank", 5), ("chip", 2)])
def test_pipeline_at_ci_scale_meets_half_the_macs(name, batches, tmp_path):
    from prunelab.config import load_config
    from prunelab.workflows import run_pipeline

    cfg = load_config("resnet20_l1", "ci", [f"method.name={name}", f"method.batches={batches}",
                                            "stages.learn.enabled=true", "stages.finetune.enabled=false",
                                            "train.progress=false"])
    res = run_pipeline(cfg, tmp_path / name, quiet=True)
    rep = res["budget_report"]
    assert rep["within_tolerance"] and rep["achieved"] <= rep["target"]
    assert (rep["target"] - rep["achieved"]) / rep["target"] <= methods.get(name).budget_tolerance
    assert res["pruned_cost"]["mixed"]["macs"] == rep["achieved"]
    assert rep["scored_images"] == batches * cfg.data.batch_size
    # the learn stage scored the network and trained nothing
    learn = torch.load(tmp_path / name / "learn.pt", weights_only=True)
    pre = torch.load(tmp_path / name / "pretrain.pt", weights_only=True)
    for k, v in pre["state_dict"].items():
        torch.testing.assert_close(learn["state_dict"][k], v, rtol=0, atol=0)
    assert set(learn["method_state"]["scores"]) == {t.name for t in methods.get(name)().tensors(
        models.describe(models.create("resnet20")))}


@pytest.mark.parametrize("name", ["hrank", "chip", "id"])
def test_a_data_reading_method_without_its_learn_stage_is_refused_before_anything_runs(name, tmp_path, capsys):
    """Refused in one line at preflight (exit 2, no run folder), not at selection after pretraining."""
    from prunelab import cli

    out = tmp_path / "run"
    rc = cli.main(["prune", "resnet20_l1", "--scale", "ci", "--out", str(out), "--set", f"method.name={name}",
                   "--set", "method.mode=global", "--set", "train.progress=false"]
                  + (["--set", "method.normalize=mean"] if name != "id" else []))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "stages.learn.enabled=true" in err[0] and name in err[0], err
    assert not out.exists()
