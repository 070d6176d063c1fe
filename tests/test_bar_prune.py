"""BAR's hard prune keeps what the pruning phase learned (issue: hard pruning wiped out accuracy), and
the pruned structure meets the budget by itself (docs/decisions.md B9, B20)."""

import numpy as np
import pytest
import torch

from prunelab import methods, models
from prunelab.counting import count
from prunelab.pruning.budget import Budget


def _gated(post_prune_scale="zhat", seed=0):
    """bar_wrn (k = 1, one block per stage) with BAR's gates between closed and open, one residual
    branch closed whole and BN statistics away from their defaults: a stand-in for a network at the
    end of the pruning phase."""
    torch.manual_seed(seed)
    net = models.create("bar_wrn", k=1, blocks_per_stage=1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    method = methods.create("bar", post_prune_scale=post_prune_scale)
    gated = method.attach(net)
    spec = gated.spec
    method.prepare(spec, Budget.parse({"metric": "volume", "factor": 1.5}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, gate in gated.items():
            # log alpha in (-4, 3): closed gates (below -2.398), open ones with 0 < z_hat < 1, saturated ones
            gate.log_alpha.copy_(torch.rand(gate.log_alpha.shape, generator=g) * 7 - 4)
        dict(gated.items())["layer2.0.mid"].log_alpha.fill_(-6.0)  # a residual branch dies whole (B10)
    return method, gated.eval(), spec


def _removed_maps_closed(gated, structure):
    """The gated network with every map the structure drops closed (z_hat = 0): what hard pruning may
    change, and nothing else."""
    import copy

    ref = copy.deepcopy(gated)
    masks = structure.masks()
    with torch.no_grad():
        for name, gate in ref.items():
            gate.log_alpha[~torch.as_tensor(masks[name])] = -20.0
    return ref.eval()


def test_hard_prune_changes_outputs_only_by_the_removed_maps():
    method, gated, spec = _gated("zhat")
    structure, report = method.select(gated, spec, None)
    assert "layer2.0" in report.extra["removed_branches"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        pruned = method.hard_prune(gated, structure).eval()(x)
        explained = _removed_maps_closed(gated, structure)(x)
        learned = gated(x)
    assert torch.allclose(pruned, explained, atol=1e-4, rtol=1e-4), (pruned - explained).abs().max()
    # the removed maps did change the function here (a branch died), so the check above is not vacuous
    assert (learned - explained).abs().max() > 1e-3


def test_multiplying_kept_maps_by_one_does_not_keep_the_function():
    """The previous default (B9 ``one``) changes the outputs beyond the removed maps whenever a kept
    gate is below 1: the defect this option fixes."""
    method, gated, spec = _gated("one")
    structure, _ = method.select(gated, spec, None)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        pruned = method.hard_prune(gated, structure).eval()(x)
        explained = _removed_maps_closed(gated, structure)(x)
    assert (pruned - explained).abs().max() > 1e-2


def test_select_closes_weakest_gates_until_the_budget_holds():
    method, gated, spec = _gated("zhat", seed=1)
    with torch.no_grad():
        for _, gate in gated.items():  # every gate open: the phase "ended" at V0, over any budget
            gate.log_alpha.copy_(torch.linspace(0.0, 3.0, gate.log_alpha.numel())[torch.randperm(gate.log_alpha.numel())])
    budget = Budget.parse({"metric": "volume", "factor": 1.25})
    structure, report = method.select(gated, spec, budget)
    v0 = count(spec).volume
    assert report.extra["end_of_phase_factor"] == pytest.approx(1.0)
    assert count(spec, structure).volume <= v0 / 1.25 and report.budget_met
    trimmed = report.extra["trimmed_channels"]
    assert trimmed and "closed to meet the budget" in report.rule
    # the closed channels are the weakest: every one has a log alpha below every kept channel's of the
    # tensors it was taken from (one at a time, lowest first)
    la = {n: g.log_alpha.detach().numpy() for n, g in gated.items()}
    closed = [la[n][i] for n, i in trimmed]
    assert closed == sorted(closed)
    kept_min = min(float(la[n][structure.alive[n]].min()) for n in structure.alive if len(structure.alive[n]) > 1)
    assert max(closed) <= kept_min
    # without trimming the same gates miss the budget
    method.options.trim_to_budget = False
    _, rep = method.select(gated, spec, budget)
    assert not rep.budget_met and not rep.extra["trimmed_channels"]
    assert np.isclose(rep.extra["end_of_phase_factor"], 1.0)


def test_trained_bar_network_loses_only_the_removed_maps_in_the_pipeline(tmp_path):
    """End to end: a short BAR pruning phase (ci data), whose gates stay open and partly below 1, then
    the pipeline's hard prune (with maps closed to meet the budget, B20). The saved pruned network equals
    the learned gated network with exactly the removed maps closed."""
    from prunelab.config import load_config
    from prunelab.pruning.result import load_result
    from prunelab.pruning.structure import Structure
    from prunelab.workflows import run_pipeline

    cfg = load_config("bar_wrn_bar", "ci", ["train.progress=false", "budget.factor=2", "method.lambda=1e-3",
                                           "method.gate_lr=0.05", "stages.finetune.enabled=false"])
    res = run_pipeline(cfg, tmp_path / "b", quiet=True)
    rep = res["budget_report"]
    assert rep["budget_met"] and rep["trimmed_channels"], rep  # the phase ended over budget here
    method = methods.from_config(cfg.method)
    gated = method.attach(models.create(cfg.model.name, **cfg.model.kwargs))
    gated.load_state_dict(torch.load(tmp_path / "b" / "learn.pt", weights_only=True)["state_dict"])
    gated.eval()
    zhat = torch.cat([g.values().detach() for _, g in gated.items()])
    assert ((zhat > 0.05) & (zhat < 0.95)).float().mean() > 0.2  # many kept maps are scaled, not 0/1
    structure = Structure.load(tmp_path / "b" / "structure.json")
    pruned = load_result(tmp_path / "b" / "pruned").module.eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        out, explained = pruned(x), _removed_maps_closed(gated, structure)(x)
    assert torch.allclose(out, explained, atol=1e-4, rtol=1e-4), (out - explained).abs().max()
    # the learned accuracy is logged next to the hard-pruned one
    assert 0 <= res["learned_test_acc"] <= 1 and 0 <= res["pruned_test_acc_before_finetune"] <= 1
