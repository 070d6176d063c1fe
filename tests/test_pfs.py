"""PFS's protocol pieces: Scratch-B schedules at paper scale, the full model's recipe, VGG's
re-initialisation, the paper-scale conventions, the save rule's early stop, and gates never selected on
the test split; a ci-scale smoke run of the VGG-16 paper settings."""

from __future__ import annotations

import pytest
import torch

from prunelab import methods, models
from prunelab.config import TrainConfig, load_config
from prunelab.errors import ConfigError
from prunelab.experiments.pfs_study import full_model_overrides, scratch_schedule
from prunelab.pruning.budget import Budget
from prunelab.train.trainer import Trainer
from prunelab.workflows import run_pipeline
from prunelab.workflows.stages import reinit, stage_config

from test_method_conformance import SyntheticLoader


@pytest.mark.parametrize("ratio,epochs,milestones", [(0.3, 228, [114, 171]), (0.5, 320, [160, 240]),
                                                      (0.7, 533, [266, 399]), (0.8, 800, [400, 600])])
def test_scratch_b_schedules_scale_their_milestones(ratio, epochs, milestones):
    over = scratch_schedule("paper", ratio)
    assert over["train"]["epochs"] == epochs and over["schedule"]["milestones"] == milestones
    cfg = load_config("resnet20_pfs", "paper", overrides={"stages": {"finetune": over}})
    ft = stage_config(cfg, "finetune")
    assert ft.train.epochs == epochs and ft.schedule.milestones == milestones and ft.schedule.name == "multistep"
    assert ft.optim.lr == 0.1 and not ft.optim.nesterov and ft.optim.weight_decay == 1e-4
    assert ft.optim.decay_norm_and_bias and ft.train.label_smoothing == 0
    assert scratch_schedule("cpu", ratio) == {"train": {"epochs": 2}}


def test_full_model_has_its_own_recipe_at_paper_scale():
    over = full_model_overrides("paper", 0)
    cfg = load_config("resnet56", "paper", overrides=over)
    assert cfg.train.epochs == 160 and cfg.schedule.milestones == [80, 120] and cfg.optim.lr == 0.1
    assert cfg.model.kwargs == {"shortcut": "B"} and cfg.optim.weight_decay == 1e-4 and not cfg.optim.nesterov


def test_paper_conventions_shortcut_b_and_counted_pooling():
    cfg = load_config("resnet20_pfs", "paper")
    assert cfg.model.kwargs.get("shortcut") == "B" and cfg.method.get("count_pool") is True


def test_vgg_reinit_follows_the_official_initialisation():
    vgg = models.create("vgg16")
    with torch.no_grad():
        for p in vgg.parameters():
            p.fill_(3.0)
    reinit(vgg, 0)
    bns = [m for m in vgg.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 0.5) and torch.all(m.bias == 0) for m in bns)
    fc = vgg.classifier
    assert torch.all(fc.bias == 0) and 0.005 < float(fc.weight.detach().std()) < 0.02  # N(0, 0.01)
    r20 = models.create("resnet20")
    reinit(r20, 0)
    assert all(torch.all(m.weight == 1) for m in r20.modules() if isinstance(m, torch.nn.BatchNorm2d))


class _Eval:
    """An eval loader stand-in for the trainer's per-epoch evaluations."""

    def __init__(self):
        self.data = SyntheticLoader(1, batch=8).data

    def __iter__(self):
        return iter(self.data)


def _learn(evals, **opts):
    m = methods.create("pfs", **opts)
    net = models.create("resnet20")
    model = m.attach(net)
    m.prepare(models.describe(net), Budget("macs", 0.5))
    cfg = TrainConfig(epochs=3, progress=False, channels_last=False, label_smoothing=0.0)
    tr = Trainer(model, SyntheticLoader(), evals, train_cfg=cfg, hooks=[m], device="cpu")
    tr.fit()
    return m, tr


def test_gates_are_never_selected_on_the_test_split():
    with pytest.raises(ConfigError, match="never selects on the test set"):
        _learn({"test": _Eval()})


def test_stop_when_saved_ends_gate_learning_at_the_first_saved_epoch():
    m, tr = _learn({"val": _Eval()}, density_target=1.0, stop_when_saved=True)  # density <= 1 always holds
    assert m.best is not None and m.best[1] == 1 and tr.epoch == 1 and tr.stopped_early == 1
    m2, tr2 = _learn({"val": _Eval()}, density_target=1.0)
    assert tr2.epoch == 3 and tr2.stopped_early is None


def test_vgg16_paper_settings_smoke_at_ci_scale(tmp_path):
    cfg = load_config("vgg16_pfs", "ci", overrides={"train": {"progress": False}})
    assert stage_config(load_config("vgg16_pfs", "paper"), "finetune").train.epochs == 320
    res = run_pipeline(cfg, tmp_path / "vgg", quiet=True)
    rep = res["budget_report"]
    assert rep["achieved"] <= rep["target"] and len(rep["widths"]) == 13 and "final_test_acc" in res
