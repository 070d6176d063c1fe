"""The learned baselines ``ib`` (variational information bottleneck) and ``morphnet`` (FLOP-weighted L1
on BN scales): their formulas against closed forms and the shared counter, their selection rules, and a
short pipeline run of each through ``prunelab prune`` at ci scale."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import prunelab.methods.ib  # noqa: F401  (registration on import)
import prunelab.methods.morphnet  # noqa: F401
from prunelab import methods, models
from prunelab.counting import count
from prunelab.methods.ib import IBGate, kl_per_channel
from prunelab.methods.morphnet import channel_costs, expanded_widths, units_of
from prunelab.pruning.budget import Budget
from prunelab.pruning.structure import Structure


def gated_resnet20(**options):
    torch.manual_seed(0)
    m = methods.create("ib", **options)
    net = models.create("resnet20")
    spec = models.describe(net)
    m.prepare(spec, None)
    return m, m.attach(net), spec


# -- IB ----------------------------------------------------------------------------------------------


def test_ib_kl_is_the_closed_form_weighted_per_layer():
    m, gated, spec = gated_resnet20()
    g = torch.Generator().manual_seed(3)
    expected = {"width": 0.0, "area": 0.0, "none": 0.0}
    with torch.no_grad():
        for name, gate in gated.items():
            gate.mu.copy_(torch.rand(gate.channels, generator=g) * 2 - 0.5)
            gate.log_var.copy_(torch.rand(gate.channels, generator=g) * 10 - 8)
            mu, var = gate.mu.double().numpy(), np.exp(gate.log_var.double().numpy())
            per_layer = sum(0.5 * math.log(1 + a * a / v) for a, v in zip(mu, var))
            area = spec.tensor(name).area
            expected["width"] += math.sqrt(area) * per_layer
            expected["area"] += area * per_layer
            expected["none"] += per_layer
    # the README configurations' m_l * H_l * W_l is the side of the map: 32, 16, 8 on ResNet-20
    assert {math.sqrt(spec.tensor(n).area) for n in gated.gate_names} == {32.0, 16.0, 8.0}
    for kind, value in expected.items():
        m.options.layer_weight = kind
        assert float(m.kl(gated).detach()) == pytest.approx(value, rel=1e-5), kind
    # one channel by hand: mu = 1, sigma^2 = e^-9 -> 1/2 log(1 + e^9)
    one = float(kl_per_channel(torch.tensor([1.0]), torch.tensor([-9.0])))
    assert one == pytest.approx(0.5 * math.log1p(math.e ** 9))

    class Stub:
        model = gated

    m.options.layer_weight = "width"
    m.setup(Stub())
    assert float(m.loss_terms(Stub(), None)["ib_kl"].detach()) == pytest.approx(1e-5 * expected["width"], rel=1e-5)


def test_ib_gate_is_mu_in_eval_and_noisy_in_training():
    torch.manual_seed(0)
    gate = IBGate(4, threshold=0.0)
    with torch.no_grad():
        gate.mu.copy_(torch.tensor([1.0, 0.5, -0.8, 0.01]))
        gate.log_var.copy_(torch.tensor([-2.0, -2.0, -2.0, -2.0]))  # the last: log alpha = -2 - log 1e-4 > 0
    x = torch.ones(2000, 4, 3, 3)
    gate.eval()
    out = gate(x)
    assert torch.equal(out, gate(x))  # deterministic
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.5, -0.8, 0.0]))  # mu on alive channels
    gate.train()
    a, b = gate(x), gate(x)
    assert not torch.equal(a, b)  # a new draw every pass
    assert not torch.equal(a[0], a[1])  # and per example (the code's reparameterize)
    z = a[:, :, 0, 0]
    assert torch.equal(z, a[:, :, 2, 1])  # one value per channel and example
    sigma = math.exp(-1.0)
    torch.testing.assert_close(z.mean(0), gate.mu.detach(), atol=4 * sigma / math.sqrt(2000), rtol=0)
    torch.testing.assert_close(z.std(0), torch.full((4,), sigma), atol=0.1 * sigma, rtol=0)
    # noise: batch draws one value per channel for the whole batch
    gate.noise = "batch"
    c = gate(x)
    assert torch.equal(c[0], c[1]) and not torch.equal(c, gate(x))

    # the same through a gated network (the BN-fused path): eval deterministic, training noisy
    m, gated, spec = gated_resnet20()
    with torch.no_grad():
        for _, g in gated.items():
            g.log_var.fill_(-3.0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gated.eval()
    with torch.no_grad():
        assert torch.equal(gated(x), gated(x))
        gated.train()
        assert not torch.allclose(gated(x), gated(x))


@pytest.mark.parametrize("threshold", [0.0, 1.5, -2.0])
def test_ib_prunes_exactly_where_log_alpha_reaches_the_threshold(threshold):
    m, gated, spec = gated_resnet20(threshold=threshold)
    rng = np.random.default_rng(1)
    expected = {}
    with torch.no_grad():
        for name, gate in gated.items():
            c = gate.channels
            gate.mu.fill_(1.0)  # log(1 + 1e-8) is 0 in float32: log alpha = log sigma^2 exactly
            la = threshold + rng.choice([-3.0, -0.5, 0.0, 0.25, 4.0], size=c)
            la[:2] = [threshold - 1.0, threshold]  # one alive, one exactly at the threshold (pruned)
            gate.log_var.copy_(torch.tensor(la, dtype=torch.float32))
            expected[name] = np.flatnonzero(gate.log_var.numpy() < threshold)
    s, rep = m.select(gated, spec, None)
    assert not rep.extra["revived"]
    for name, alive in expected.items():
        assert np.array_equal(s.alive[name], alive), name
        assert 0 in alive and 1 not in alive
    assert rep.achieved == count(spec, s).macs and rep.target is None and rep.metric == "macs"


def test_ib_reports_what_it_reached_against_a_budget():
    m, gated, spec = gated_resnet20()
    with torch.no_grad():
        gated.gate("layer3.0.mid").log_var.fill_(5.0)  # every channel of one tensor closed
    budget = Budget("macs", 0.5)
    result = m.finalize(gated, spec, budget)
    rep = result.report
    assert m.budget_tolerance is None and not m.needs_budget
    assert rep.target == pytest.approx(0.5 * count(spec).macs)
    assert rep.achieved == count(spec, result.structure).macs < count(spec).macs
    assert rep.extra["achieved_keep"] == pytest.approx(rep.achieved / count(spec).macs)
    assert "kl_weight" in rep.extra["budget_rule"]
    assert len(result.structure.alive["layer3.0.mid"]) == 0  # a residual branch may die whole


def test_ib_initialisation():
    m, gated, spec = gated_resnet20()
    mu = torch.cat([g.mu.detach() for _, g in gated.items()]).double()
    log_var = torch.cat([g.log_var.detach() for _, g in gated.items()]).double()
    n = mu.numel()
    assert n == 16 * 6 + 32 * 6 + 64 * 6
    # mu ~ N(1, 0.01^2), log sigma^2 ~ N(-9, 0.01^2) (the code's logD), i.e. log sigma ~ N(-4.5, 0.005^2)
    assert abs(float(mu.mean()) - 1.0) < 4 * 0.01 / math.sqrt(n)
    assert abs(float(mu.std()) / 0.01 - 1) < 0.15
    assert abs(float(log_var.mean()) + 9.0) < 4 * 0.01 / math.sqrt(n)
    assert abs(float(log_var.std()) / 0.01 - 1) < 0.15
    # BAR's supplement's literal reading, log sigma ~ N(-9, 0.01^2), is init_log_var: [-18, 0.02]
    m, gated, spec = gated_resnet20(init_log_var=[-18.0, 0.02])
    log_sigma = 0.5 * torch.cat([g.log_var.detach() for _, g in gated.items()]).double()
    assert abs(float(log_sigma.mean()) + 9.0) < 4 * 0.01 / math.sqrt(n)
    assert abs(float(log_sigma.std()) / 0.01 - 1) < 0.15
    # every channel starts alive (log alpha ~ -9) and the config round-trips
    assert all(bool(g.alive().all()) for _, g in gated.items())
    assert methods.from_config(m.config()).config() == m.config()


# -- MorphNet ----------------------------------------------------------------------------------------


def _full(spec, units):
    return [np.ones(spec.tensor(u[0]).channels, dtype=bool) for u in units]


def test_morphnet_channel_cost_is_the_counters_difference():
    spec = models.describe(models.create("resnet20"))
    units = units_of(spec, spec.names, grouped=True)
    assert all(len(u) == 1 for u in units)  # shortcut A: no gated trunk
    costs = dict(zip([u[0] for u in units], channel_costs(spec, units, _full(spec, units))))
    dense = count(spec).macs
    for name in ("layer1.0.mid", "layer2.1.delta", "layer3.2.delta", "layer2.0.mid"):
        c = spec.tensor(name).channels
        assert costs[name] == dense - count(spec, {name: np.arange(1, c)}).macs, name
    # by hand: a stage-2 mid channel is written by a 3x3 conv from 32 channels and read by one into 32,
    # both at 16 x 16
    assert costs["layer2.1.mid"] == 2 * 9 * 32 * 16 * 16
    # at a partly alive structure: what removing its weakest alive channel takes away
    rng = np.random.default_rng(0)
    masks = [rng.random(spec.tensor(u[0]).channels) < 0.6 for u in units]
    scores = [rng.random(len(mk)) for mk in masks]
    got = channel_costs(spec, units, masks, scores)
    alive = {u[0]: mk for u, mk in zip(units, masks)}
    base = count(spec, alive).macs
    for i in (0, 7, 16):
        name, mk = units[i][0], masks[i].copy()
        idx = np.flatnonzero(mk)
        mk[idx[np.argmin(scores[i][idx])]] = False
        assert got[i] == base - count(spec, {**alive, name: mk}).macs


def test_morphnet_trunk_groups_cost_and_keep_a_channel_alive_if_any_member_is():
    torch.manual_seed(0)
    net = models.create("resnet20", shortcut="B")
    spec = models.describe(net)
    m = methods.create("morphnet", expand_to_budget=False)
    m.prepare(spec, None)
    units = m.units(spec)
    trunk = spec.trunks()["stage2"]
    assert trunk in units and all(len(u) == 1 for u in units if u[0] not in spec.trunks()["stage1"] + trunk
                                  and u[0] not in spec.trunks()["stage3"])
    # a trunk channel's cost: removed from every member at once
    costs = dict(zip(map(tuple, units), channel_costs(spec, units, _full(spec, units))))
    removed = {n: np.arange(1, 32) for n in trunk}
    assert costs[tuple(trunk)] == count(spec).macs - count(spec, removed).macs
    # gammas: channel c of the trunk survives iff any member's |gamma| > threshold
    thr = m.options.threshold
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for t in spec.tensors:
            net.get_submodule(t.module).weight.fill_(1.0)
        for n in trunk:
            net.get_submodule(spec.tensor(n).module).weight.fill_(thr / 2)
        lone = rng.permutation(32)[:10]
        for i, c in enumerate(lone):  # one member, a different one each time, above the threshold
            member = trunk[i % len(trunk)]
            net.get_submodule(spec.tensor(member).module).weight[c] = -3 * thr  # |gamma| counts
    s, rep = m.select(net, spec, None)
    for n in trunk:
        assert np.array_equal(s.alive[n], np.sort(lone)), n  # one mask for the whole trunk
    assert rep.widths[trunk[0]] == 10 and rep.achieved == count(spec, s).macs
    # the loss: strength * sum_U cost_U / C0 * sum_c max_m |gamma_m,c|
    class Stub:
        model = net
        global_step = 0

    m.setup(Stub())
    loss = float(m.loss_terms(Stub(), None)["morphnet"].detach())
    r = {tuple(u): np.max([np.abs(net.get_submodule(spec.tensor(n).module).weight.detach().numpy()) for n in u], 0)
         for u in units}
    masks = [r[tuple(u)] > thr for u in units]
    alive_costs = channel_costs(spec, units, masks, [r[tuple(u)] for u in units])
    expected = sum(c / count(spec).macs * r[tuple(u)].sum() for c, u in zip(alive_costs, units))
    assert loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_morphnet_expansion_meets_the_budget_and_never_exceeds_full_width(shortcut):
    torch.manual_seed(0)
    net = models.create("resnet20", shortcut=shortcut)
    spec = models.describe(net)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # about a third of the channels under the threshold
        for t in spec.tensors:
            bn = net.get_submodule(t.module)
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) * 0.03)
    dense = count(spec).macs
    for refine in (True, False):
        m = methods.create("morphnet", refine=refine)
        for keep in (0.25, 0.5, 0.9):
            budget = Budget("macs", keep)
            m.prepare(spec, budget)
            s, rep = m.select(net, spec, budget)
            assert rep.achieved == count(spec, s).macs <= rep.target == pytest.approx(keep * dense)
            assert (rep.target - rep.achieved) / rep.target <= m.budget_tolerance, (refine, keep)
            assert all(len(s.alive[n]) <= spec.tensor(n).channels for n in s.alive)
            thresholded = rep.extra["thresholded_keep"]
            if keep > thresholded:
                assert rep.extra["expansion_factor"] > 1  # the thresholded network grew to the budget
            if not refine:  # exactly one factor: clamp(round(f * w), min_channels, C)
                units = m.units(spec)
                alive_w = list(rep.extra["alive_widths"].values())
                full = [spec.tensor(u[0]).channels for u in units]
                widths = expanded_widths(alive_w, full, rep.extra["expansion_factor"], 1)
                assert [len(s.alive[u[0]]) for u in units] == widths
    assert m.budget_tolerance == 0.05 and methods.create("morphnet").budget_tolerance == 0.01
    # a budget above the whole network: every unit at its full width, never beyond
    m = methods.create("morphnet")
    s, rep = m.select(net, spec, Budget("macs", 1.0))
    assert s.counts() == {n: spec.tensor(n).channels for n in s.alive} and rep.achieved == dense


# -- the pipeline ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ib", "morphnet"])
def test_pipeline_through_the_cli(method, tmp_path):
    run = tmp_path / method
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "prunelab.cli", "prune", f"resnet20_{method}", "--import",
                        f"prunelab.methods.{method}", "--scale", "ci", "--out", str(run), "--set",
                        "train.progress=false", "--set", "train.max_steps=2"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "result.json").read_text())
    rep = res["budget_report"]
    assert rep["achieved"] == res["pruned_cost"]["mixed"]["macs"]
    plan = Structure.load(run / "compact" / "plan.json")
    assert plan.cost(models.describe(models.create("resnet20"))).macs == res["final_cost"]["mixed"]["macs"]
    if method == "morphnet":  # expanded to the budget
        assert rep["within_tolerance"] and rep["achieved"] <= rep["target"]
    else:  # the budget is reported, not enforced
        assert rep["target_keep"] == 0.5 and "achieved_keep" in rep
