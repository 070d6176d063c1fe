"""DDNP (docs/decisions.md §2): the soft top-k profile and its k-gradient, the generators, the masks,
the resource ratio against the counter and the published denominator, the frozen backbone, the
variants, the presets, and the extracted network against the eval-mode masked one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import randomize_bn
from prunelab import methods, models
from prunelab.config import TrainConfig
from prunelab.counting import count
from prunelab.errors import ConfigError
from prunelab.methods.ddnp import (OFFSET, ImportanceGenerator, WidthGenerator, gumbel_like, presets, ranks,
                                   straight_through, topk_profile)
from prunelab.pruning.budget import Budget
from prunelab.pruning.result import GeneratedResult, load_result
from prunelab.train.trainer import Trainer

from test_method_conformance import SyntheticLoader


def _profile(k, c, floor=0.0):
    return topk_profile(torch.tensor([float(k)]), torch.tensor([c]), 0.05, floor)[0, :c]


# -- the soft top-k profile --------------------------------------------------------------------------


def test_profile_is_the_hard_top_k_when_the_soft_range_is_zero():
    # C = 16: s = floor(0.05 * 16) = 0, so the profile is 1[r < round(kC)] whatever delta is
    for k in (0.3, 0.47, 0.5, 0.53, 0.97):
        t = _profile(k, 16)
        assert torch.equal(t, (torch.arange(16) < round(k * 16)).float()), k


def test_profile_is_a_smoothstep_around_k():
    # C = 64: s = 3, K = round(0.5 * 64 + 0.3) = 32, delta = 0.3
    k = (32 + 0.3) / 64
    t = _profile(k, 64)
    assert torch.all(t[:29] == 1) and torch.all(t[36:] == 0)
    def smooth(x):
        u = x / 6
        return min(max(-2 * u ** 3 + 1.5 * u + 0.5, 0.0), 1.0)
    for r in range(29, 36):
        assert t[r].item() == pytest.approx(smooth(32 - r + 0.3), abs=1e-6), r
    assert torch.all(t[:-1] >= t[1:])  # non-increasing over ranks


def test_profile_range_is_clipped_at_the_ends():
    # K = 63 of 64: K + s would pass C - 1, so s = C - 1 - K = 0 (hard); K = 1: s = K = 1
    t = _profile(63 / 64, 64)
    assert torch.equal(t, (torch.arange(64) < 63).float())
    t = _profile(1.2 / 64, 64)  # K = 1, delta = 0.2, s = 1: ranks 0..2 on the smoothstep S(K - r + delta)
    for r in range(3):
        u = (1 - r + 0.2) / 2
        assert t[r].item() == pytest.approx(min(max(-2 * u ** 3 + 1.5 * u + 0.5, 0), 1), abs=1e-6)
    assert torch.all(t[3:] == 0)
    assert torch.equal(_profile(1.0, 32), torch.ones(32))


def test_floor_applies_in_training_only():
    t = _profile(0.5, 32, floor=0.025)
    assert torch.all(t >= 0.025) and t.max() == 1.0
    ctrl = _model("full").controller
    ctrl.eval()
    masks = ctrl.eval_masks()
    assert set(masks.unique().tolist()) <= {0.0, 1.0}  # evaluation: hard 0/1, no floor


def test_k_gradient_is_the_mean_of_the_upstream_gradients():
    k = torch.tensor([0.5, 0.7], requires_grad=True)
    c = torch.tensor([16, 64])
    t = topk_profile(k, c, 0.05, 0.0)
    w = torch.randn_like(t)
    (t * w).sum().backward()
    expected = torch.stack([w[0, :16].mean(), w[1, :64].mean()])
    torch.testing.assert_close(k.grad, expected)


def test_ranks_are_the_inverse_of_the_descending_order():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.0], [3.0, 1.0, 2.0, 7.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert ranks(s, valid).tolist() == [[2, 0, 1, 3], [1, 3, 2, 0]]


def test_gumbel_noise_and_straight_through():
    g = gumbel_like(torch.zeros(200_000))
    assert g.mean().item() == pytest.approx(0.5772, abs=0.01)  # one Gumbel sample: a positive bias
    soft = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    hard = straight_through(soft)
    assert hard.tolist() == [0.0, 1.0, 1.0]
    hard.sum().backward()
    assert soft.grad.tolist() == [1.0, 1.0, 1.0]


# -- generators ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,bidirectional", [("weight", False), ("layer", False), ("layer", True)])
def test_generator_shapes_and_starting_width(norm, bidirectional):
    channels = [16] * 9 + [32] * 9 + [64] * 9  # ResNet-56: L = 27
    gs = ImportanceGenerator(channels, norm=norm, bidirectional=bidirectional)
    gk = WidthGenerator(27, norm=norm)
    z = gs()
    assert z.shape == (27, 64)
    k = torch.sigmoid(gk() + OFFSET)
    assert k.shape == (27,) and torch.all((k > 0) & (k < 1))
    assert k.mean().item() == pytest.approx(1 / (1 + math.exp(-3)), abs=0.04)  # ~0.953: the whole network


def test_generator_inputs_fixed_or_learnable():
    fixed = _model("full").controller
    assert not any("inputs" in n for n, _ in fixed.named_parameters())
    assert "importance.inputs" in fixed.state_dict() and "width.inputs" in fixed.state_dict()
    learn = _model("full", learnable_input=True).controller
    names = {n for n, _ in learn.named_parameters()}
    assert {"importance.inputs", "width.inputs"} <= names  # D12: both generators


# -- the method ------------------------------------------------------------------------------------------


def _model(variant="full", seed=0, **opts):
    torch.manual_seed(seed)
    m = methods.create("ddnp", variant=variant, **opts)
    net = randomize_bn(models.create("resnet20"), seed)
    model = m.attach(net)
    m.prepare(models.describe(net), None)
    model.method = m
    return model


def _train(model, steps=2, batch=16, **cfg):
    m = model.method
    loader = SyntheticLoader(steps, batch=batch)
    tc = TrainConfig(epochs=cfg.pop("epochs", 1), progress=False, channels_last=False, label_smoothing=0.0)
    tr = Trainer(model, loader, {}, train_cfg=tc, hooks=[m], device="cpu")
    tr.fit()
    return tr


def test_resource_ratio_is_the_counter_in_ddnps_convention():
    # the denominator: ResNet-56's block convs plus 3 ops per BN/ReLU output element = 126.59 M (§0.6)
    m = methods.create("ddnp")
    spec = models.describe(models.create("resnet56"))
    m.prepare(spec, None)
    assert m._dense_ops == 126_590_976
    # R of given widths against F_l(c) = 9 C_in c HW + 3 c HW + 9 c C_out HW + 3 C_out HW
    rng = np.random.default_rng(0)
    widths = {t.name: int(rng.integers(1, t.channels + 1)) for t in spec.select("mid")}

    def f(t, c):
        conv1 = spec.ops[[o.name for o in spec.ops].index(t.conv)]
        hw = t.area
        return 9 * conv1.in_channels * c * hw + 3 * c * hw + 9 * c * t.channels * hw + 3 * t.channels * hw

    mids = spec.select("mid")
    expected = sum(f(t, widths[t.name]) for t in mids) / sum(f(t, t.channels) for t in mids)
    soft = m.resource_ratio({n: torch.tensor(float(w), requires_grad=True) for n, w in widths.items()})
    assert soft.item() == pytest.approx(expected, rel=1e-6)  # float32 widths
    assert m.hard_ratio([widths[t.name] for t in mids]) == pytest.approx(expected, rel=1e-12)


def test_training_keeps_the_backbone_frozen_and_bn_in_eval_mode():
    model = _model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    ctrl_before = {k: v.clone() for k, v in model.controller.state_dict().items()}
    _train(model)
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    changed = [k for k, v in model.controller.state_dict().items() if not torch.equal(ctrl_before[k], v)]
    assert "ema" in changed and any(k.startswith("importance.") for k in changed) and any(
        k.startswith("width.") for k in changed)


def test_alignment_term_moves_only_k():
    model = _model()
    model.train()
    model.net.eval()
    model(torch.randn(4, 3, 32, 32))
    m = model.method
    model.zero_grad()
    m.options.lambda_ = 0.0
    terms = m.loss_terms(type("T", (), {"model": model})(), type("B", (), {"ce_per_sample": torch.zeros(4)})())
    terms["alignment"].backward()
    ctrl = model.controller
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in ctrl.importance.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in ctrl.width.parameters())


def test_the_resource_loss_drives_r_to_p():
    """Mechanics on synthetic data: the resource loss (with the alignment term that ties k to the gates)
    moves the eval width ratio from the whole network to p."""
    model = _model(p=0.5, width_lr=0.02, gate_lr=0.02)
    tr = _train(model, steps=2, batch=8, epochs=40)
    log = model.method.log
    assert log[0]["R_hard"] > 0.85
    assert abs(log[-1]["R_hard"] - 0.5) <= 0.05, [round(r["R_hard"], 3) for r in log[::10]]
    assert tr.history[-1]["resource"] < tr.history[0]["resource"]


def test_eval_masked_network_equals_the_extracted_one(tmp_path):
    model = _model()
    _train(model)
    with torch.no_grad():  # an EMA with distinct values and widths well below the full ones
        model.controller.ema.copy_(torch.rand_like(model.controller.ema))
        model.controller.width.fc2.bias.fill_(-3.5)
    m = model.method
    result = m.finalize(model, model.spec, None)
    assert isinstance(result, GeneratedResult)
    kept = result.report.widths
    assert all(0 < w < model.spec.tensor(n).channels for n, w in kept.items())
    static = result.to_static()
    assert static.structure.counts() == kept
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(static.module.eval()(x), result.module.eval()(x), rtol=1e-5, atol=1e-5)
    # the kept channels are the top of the EMA ranking
    for j, (n, g) in enumerate(result.module.items()):
        ema = model.controller.ema[j, : g.channels]
        top = torch.argsort(ema, descending=True, stable=True)[: kept[n]]
        assert set(np.flatnonzero(g.values().numpy())) == set(top.tolist())
    assert result.report.achieved == count(model.spec, static.structure).macs
    # saved and reloaded, the generated result makes the same structure
    result.save(tmp_path / "r")
    again = load_result(tmp_path / "r")
    assert again.structure().counts() == kept


def test_ema_importance_is_a_buffer_in_the_state_dict():
    model = _model()
    _train(model)
    state = model.state_dict()
    assert "controller.ema" in state and state["controller.ema"].abs().sum() > 0


# -- variants --------------------------------------------------------------------------------------------


def test_fix_s_ranks_by_the_l1_norm_and_trains_only_k():
    model = _model("fix_s")
    ctrl = model.controller
    assert ctrl.importance is None and ctrl.width is not None
    _train(model)
    model.eval()
    masks = ctrl.eval_masks()
    for j, (n, g) in enumerate(model.items()):
        conv = model.net.get_submodule(model.spec.tensor(n).conv)
        l1 = conv.weight.detach().abs().flatten(1).sum(1)
        kept = int(masks[j].sum())
        assert set(np.flatnonzero(masks[j, : g.channels].numpy())) == set(torch.topk(l1, kept).indices.tolist())
    groups = [g.name for g in model.method.param_groups(type("T", (), {"model": model})())]
    assert groups == ["width"]


def test_fix_s_scales_over_all_layers_and_feeds_soft_gates_as_the_official_code():
    """Issue 29 / D9: the official im_static (gaosh/DDNP@5417577, models/hypernet.py) min-max scales the
    concatenated scores of every layer to [-3, 3], centres the gates on their global mean and hands the soft
    gates to terms 2 and 3. Per-layer scaling puts about half of every layer's gates above 0.5 (abar ~ 0.5
    everywhere), which is what made Fix S's widths equal l1's; the global reading lets them differ."""
    glob = _model("fix_s").controller
    per = _model("fix_s", fix_s_scaling="per_layer", fix_s_gate="hard").controller
    valid = glob.valid
    s = glob.fixed_score[valid]
    assert float(s.min()) == pytest.approx(-3) and float(s.max()) == pytest.approx(3)
    lo = glob.fixed_score.masked_fill(~valid, 9).amin(1)
    assert (lo > -3 + 1e-3).any()  # some layer does not reach the global minimum: not per-layer scaling
    for j in range(len(per.names)):
        row = per.fixed_score[j, valid[j]]
        assert float(row.min()) == pytest.approx(-3) and float(row.max()) == pytest.approx(3)
        # the same ranking within each layer under both readings
        assert torch.equal(torch.argsort(row), torch.argsort(glob.fixed_score[j, valid[j]]))
    gate = glob._fixed_gate()
    assert float(((gate * valid).sum() / glob.channels.sum() - torch.sigmoid(
        (s - s.mean()) / 0.7).mean()).abs()) < 1e-6
    abar_global = ((gate >= 0.5) & valid).sum(1).float() / glob.channels
    abar_per = ((per._fixed_gate() >= 0.5) & valid).sum(1).float() / per.channels
    assert float(abar_global.std()) > 2 * float(abar_per.std())
    model = _model("fix_s")
    _train(model, steps=1)
    a = model.controller.last["a"]
    assert ((a > 0) & (a < 1)).any()  # soft gates reach terms 2 and 3, not their 0.5 threshold


def test_fix_k_keeps_half_of_every_layer():
    model = _model("fix_k")
    _train(model)
    m = model.method
    assert model.controller.width is None
    assert all(k == 0.5 for k in m.log[-1]["k"])
    assert m.log[-1]["widths"] == [round(0.5 * c) for c in model.controller.channel_list]


def test_channelwise_has_one_scalar_per_channel_and_per_layer():
    model = _model("channelwise")
    ctrl = model.controller
    n_channels = sum(ctrl.channel_list)
    assert sum(p.numel() for p in ctrl.importance.parameters()) >= n_channels
    assert sum(p.numel() for p in ctrl.width.parameters()) == len(ctrl.names)
    _train(model)
    m = model.method
    assert m.objective == "two_term" and "alignment" not in m.loss_terms(  # the official code's two terms
        type("T", (), {"model": model})(), type("B", (), {"ce_per_sample": torch.zeros(2)})())
    groups = {g.name: g.lr for g in m.param_groups(type("T", (), {"model": model})())}
    assert groups["width"] == pytest.approx(10 * m.options.width_lr)  # the scalars' 10x learning rate
    assert methods.create("ddnp", variant="channelwise", objective="three_term").options.objective == "three_term"


@pytest.mark.parametrize("score", ["abs", "square"])
def test_output_functions_change_only_the_ranking(score):
    model = _model(score_function=score)
    _train(model)
    assert model.method.log[-1]["R_hard"] > 0


def test_feature_norm_prior_is_measured_once():
    model = _model(importance_prior="feature_norm")
    _train(model)
    prior = model.controller.prior
    v = prior[model.controller.valid]
    assert model.method._prior_done and torch.all(v >= 0) and v.std() > 0  # measured (it starts at all ones)


# -- options, presets, budgets ----------------------------------------------------------------------------


def test_presets_are_table_a1():
    table = presets()
    assert table["cifar10-resnet56"] == 0.48 and table["imagenet-resnet50-62"] == 0.31
    assert methods.create("ddnp", preset="imagenet-mobilenetv2").target() == 0.67
    assert methods.create("ddnp").target() == 0.48  # D6
    with pytest.raises(ConfigError, match="no preset 'cifar10-resnet5'. Did you mean 'cifar10-resnet56'"):
        methods.create("ddnp", preset="cifar10-resnet5")
    with pytest.raises(ConfigError, match="contradicts preset"):
        methods.create("ddnp", p=0.5, preset="cifar10-resnet56")


def test_budget_and_p_must_agree():
    assert methods.create("ddnp").target(Budget("macs", 0.4)) == 0.4
    with pytest.raises(ConfigError, match="disagree"):
        methods.create("ddnp", p=0.5).target(Budget("macs", 0.4))
    m = methods.create("ddnp")
    with pytest.raises(ConfigError, match="must be macs or flops"):
        m.prepare(models.describe(models.create("resnet20")), Budget("volume", 0.5))


def test_bad_options_name_the_fix():
    with pytest.raises(ConfigError, match="option 'variant' must be one of 'full', 'fix_s', 'fix_k', 'channelwise'"):
        methods.create("ddnp", variant="fixs")
    with pytest.raises(ConfigError, match=r"p \(the remaining ratio\) must be in \(0, 1\]"):
        methods.create("ddnp", p=1.5)


def test_paper_and_cpu_configs_resolve_to_the_protocols():
    """Paper scale: ResNet-56, p from Table A1, 200 search epochs on the 5 % split at lr 1e-3, 200 fine-tuning
    epochs after a 5-epoch warm-up, x0.1 at 100 and 150 (counted after the warm-up), SGD 0.1, wd 1e-4 (§2.6)."""
    from prunelab.config import load_config
    from prunelab.workflows.stages import stage_config

    paper = load_config("resnet20_ddnp", "paper")
    m = methods.from_config(paper.method)
    assert paper.model.name == "resnet56" and m.target() == 0.48 and m.options.gate_lr == m.options.width_lr == 1e-3
    learn, ft = stage_config(paper, "learn"), stage_config(paper, "finetune")
    assert learn.train.epochs == 200 and learn.data.holdout == 0.05 and learn.data.train_on_holdout
    assert learn.data.batch_size == 256 and not learn.data.augment and learn.train.label_smoothing == 0
    assert learn.data.test_per_class is None and learn.data.val_per_class is None
    assert ft.train.epochs == 205 and ft.schedule.name == "multistep" and ft.schedule.warmup == 5
    assert ft.schedule.milestones == [105, 155] and ft.optim.lr == 0.1 and ft.optim.weight_decay == 1e-4
    assert ft.train.label_smoothing == 0 and ft.data.holdout == 0 and ft.data.augment
    cpu = load_config("resnet20_ddnp", "cpu")
    assert methods.from_config(cpu.method).target() == 0.5 and stage_config(cpu, "learn").train.epochs == 40


def test_sweep_settings_orders_values_and_places_the_full_method():
    from prunelab.analysis.ddnp import sweep_settings

    run = {"setting": None, "seed": 0}
    study = {"settings": {"full": {}, "lambda=0.05": {}, "lambda=0.5": {}, "rho=0": {}, "lambda=8": {}},
             "runs": {k: {**run, "setting": k} for k in ("full", "lambda=0.05", "lambda=0.5", "rho=0")}}
    assert sweep_settings(study, "lambda", 4.0) == [(0.05, "lambda=0.05"), (0.5, "lambda=0.5"), (4.0, "full")]
    assert sweep_settings(study, "rho", 1.0) == [(0.0, "rho=0"), (1.0, "full")]  # lambda=8 has no runs: left out
