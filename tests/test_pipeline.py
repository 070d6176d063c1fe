"""The pruning pipeline end to end through the CLI, its resume, and the registered methods."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from prunelab import methods, models
from prunelab.config import load_config
from prunelab.errors import ConfigError, UnknownNameError
from prunelab.pruning.budget import Budget
from prunelab.pruning.compact import load_compact
from prunelab.workflows import run_pipeline
from prunelab.pruning.structure import Structure
from prunelab.train.rundir import read_metrics

PY = sys.executable


def cli(*args, env=None, check=True):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([PY, "-m", "prunelab.cli", *args], capture_output=True, text=True, env=e, check=check)


def test_registry():
    assert {"random", "l1", "slimming", "lzr", "bar", "pfs"} <= set(methods.list_methods())
    with pytest.raises(UnknownNameError, match="Did you mean 'l1'"):
        methods.get("l2")
    with pytest.raises(ConfigError, match="no option"):
        methods.create("l1", nromalize="mean")


def test_l1_pipeline_through_cli_and_compact_command(tmp_path):
    run = tmp_path / "p"
    r = cli("prune", "resnet20_l1", "--scale", "ci", "--out", str(run), "--set", "train.progress=false")
    assert "fine-tuned" in r.stdout
    # issue 29: a ci summary says its accuracy means nothing (a smoke run on tiny data)
    summary = next(line for line in r.stdout.splitlines() if "fine-tuned" in line)
    assert "smoke run" in summary and "accuracy means nothing" in summary, summary
    res = json.loads((run / "result.json").read_text())
    rep = res["budget_report"]
    assert rep["within_tolerance"] and rep["achieved"] <= rep["target"]
    model = load_compact(run / "compact")
    plan = Structure.load(run / "compact" / "plan.json")
    assert plan.cost(models.describe(models.create("resnet20"))).macs == res["pruned_cost"]["mixed"]["macs"]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert "test accuracy" in cli("eval", str(run)).stdout
    assert "finished stages: pretrain, prune, finetune" in cli("info", str(run)).stdout
    out = cli("compact", str(run), "--out", str(tmp_path / "c")).stdout
    assert (tmp_path / "c" / "plan.json").exists() and "written" in out
    # a second compact into the same folder is refused (nothing overwritten) unless --force moves it aside
    plan = (tmp_path / "c" / "plan.json").read_bytes()
    again = cli("compact", str(run), "--out", str(tmp_path / "c"), check=False)
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (tmp_path / "c" / "plan.json").read_bytes() == plan
    forced = cli("compact", str(run), "--out", str(tmp_path / "c"), "--force")
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("c.old-")]
    assert len(backups) == 1 and (backups[0] / "plan.json").read_bytes() == plan and "moved" in forced.stdout


def test_pipeline_resumes_after_a_kill_in_finetune(tmp_path):
    args = ["prune", "resnet20_l1", "--scale", "ci", "--out", str(tmp_path / "p"),
            "--set", "stages.finetune.train.epochs=2", "--set", "train.progress=false"]
    killed = cli(*args, env={"PRUNELAB_TEST_SIGKILL_AT_STEP": "7"}, check=False)
    assert killed.returncode == -9
    state = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert state["done"] == ["pretrain", "prune"]  # killed during fine-tuning (5 steps per epoch)
    cli(*args, "--resume")
    assert json.loads((tmp_path / "p" / "pipeline.json").read_text())["done"][-1] == "finetune"


def test_slimming_learns_sparser_bn_scales(tmp_path):
    sets = ["method.name=slimming", "method.sparsity=0.01", "stages.learn.train.epochs=2", "train.progress=false"]
    cfg = load_config("resnet20_l1", "ci", sets)
    res = run_pipeline(cfg, tmp_path / "s", quiet=True)
    learn = [m for m in read_metrics(tmp_path / "s") if m.get("stage") == "learn"]
    assert learn and "bn_l1" in learn[0]
    assert learn[-1]["bn_gamma_mean"] < 1.0  # the L1 penalty shrinks the scales from their init of 1
    assert res["budget_report"]["within_tolerance"]


def test_lzr_prunes_without_a_budget(tmp_path):
    sets = ["method.name=lzr", "method.lambda=0.5", "method.gate_lr=0.5", "stages.learn.train.epochs=2",
            "model.name=bar_wrn", "model.kwargs={k: 1, blocks_per_stage: 1}", "train.progress=false"]
    cfg = load_config("resnet20_l1", "ci", sets + ["budget={}"])
    res = run_pipeline(cfg, tmp_path / "z", quiet=True)
    assert res["pruned_cost"]["mixed"]["volume"] < res["dense_cost"]["mixed"]["volume"]  # gates died


def test_bar_mechanics(tmp_path):
    from prunelab.methods.bar import barrier, transition

    cfg = load_config("bar_wrn_bar", "ci", ["train.progress=false", "budget.factor=2"])
    res = run_pipeline(cfg, tmp_path / "b", quiet=True)
    trace = np.load(tmp_path / "b" / "arrays" / "bar_trace.npy")
    steps, v, b, f, l_hc = trace.T
    total = steps.max() + 1
    assert np.allclose(b, [(1 - transition(s / total)) * 1.01 * v[0] + transition(s / total) * v[0] / 2 for s in steps],
                       rtol=1e-6)
    assert np.allclose(f, [barrier(vi, 0.5 * v[0] * (1 - 1e-4), bi) for vi, bi in zip(v, b)])
    assert res["budget_report"]["metric"] == "volume"


def test_bar_budget_and_teacher_validation():
    with pytest.raises(ConfigError, match="b0_factor"):
        methods.create("bar", b0_factor=0.99)
    m = methods.create("bar")
    with pytest.raises(ConfigError, match="budget"):
        m.prepare(models.describe(models.create("bar_wrn", k=1)), None)


def test_pfs_gate_learning_keeps_weights_frozen(tmp_path):
    cfg = load_config("resnet20_pfs", "ci", ["train.progress=false", "stages.finetune.enabled=false"])
    run_pipeline(cfg, tmp_path / "f", quiet=True)
    learned = torch.load(tmp_path / "f" / "learn.pt", weights_only=True)["state_dict"]
    init = torch.load(tmp_path / "f" / "pretrain.pt", weights_only=True)["state_dict"]
    for k, v in init.items():
        if k.endswith(("weight", "bias")) and "running" not in k:
            assert torch.equal(v, learned[f"net.{k}"]), k  # conv, BN affine and classifier never change
    gates = torch.cat([v for k, v in learned.items() if k.startswith("gates.")])
    assert gates.min() >= 0 and gates.max() <= 1 and gates.mean() < 1  # clamped, pulled toward r
    # BN stays in train mode during gate learning: running statistics moved
    assert not torch.equal(init["bn1.running_mean"], learned["net.bn1.running_mean"])


def test_method_options_given_as_text_become_numbers():
    assert methods.create("bar", **{"lambda": "3e-4"}).options.lambda_ == 3e-4
    with pytest.raises(ConfigError, match="must be a number"):
        methods.create("bar", **{"lambda": "lots"})


def test_resume_after_the_learn_stage_selects_the_identical_structure(tmp_path):
    """PFS's save rule keeps the gates of its best held-out epoch in the method's state; a run killed
    right after the learn stage must select from those gates on resume, not from the final ones."""
    args = ["prune", "resnet20_pfs", "--scale", "ci", "--set", "train.progress=false", "--set",
            "stages.finetune.enabled=false", "--set", "method.density_target=1.0",
            "--set", "stages.learn.train.epochs=3"]
    cli(*args, "--out", str(tmp_path / "whole"))
    killed = cli(*args, "--out", str(tmp_path / "k"), env={"PRUNELAB_TEST_SIGKILL_AFTER_STAGE": "learn"}, check=False)
    assert killed.returncode == -9
    assert json.loads((tmp_path / "k" / "pipeline.json").read_text())["done"] == ["pretrain", "learn"]
    assert not (tmp_path / "k" / "structure.json").exists()
    cli(*args, "--out", str(tmp_path / "k"), "--resume")
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())["budget_report"]
    resumed = json.loads((tmp_path / "k" / "result.json").read_text())["budget_report"]
    assert whole["gates_from"].startswith("epoch")  # the save rule chose an epoch's gates
    assert resumed["gates_from"] == whole["gates_from"]
    a, b = Structure.load(tmp_path / "whole" / "structure.json"), Structure.load(tmp_path / "k" / "structure.json")
    assert a.counts() == b.counts() and all(np.array_equal(a.alive[n], b.alive[n]) for n in a.alive)


def test_ddnp_pipeline_resumes_exactly_and_extracts(tmp_path):
    """A DDNP search killed mid-epoch and resumed ends with the same generators, widths and log as an
    uninterrupted one (Gumbel noise, EMA buffer, optimisers and the epoch's running sums all restored);
    the run logs every stage boundary and the CLI's info/eval/compact read it."""
    cli("train", "resnet20", "--scale", "ci", "--out", str(tmp_path / "dense"), "--set", "train.progress=false")
    args = ["prune", "resnet20_ddnp", "--scale", "ci", "--set", "train.progress=false", "--set",
            f"stages.pretrain.init_from={tmp_path / 'dense' / 'model.pt'}", "--set", "stages.pretrain.train=null",
            "--set", "stages.learn.train.checkpoint_every_steps=1"]
    cli(*args, "--out", str(tmp_path / "whole"))
    killed = cli(*args, "--out", str(tmp_path / "k"), env={"PRUNELAB_TEST_SIGKILL_AT_STEP": "3"}, check=False)
    assert killed.returncode == -9  # in the search's second epoch (2 steps per epoch)
    cli(*args, "--out", str(tmp_path / "k"), "--resume")
    a = torch.load(tmp_path / "whole" / "learn.pt", weights_only=True)
    b = torch.load(tmp_path / "k" / "learn.pt", weights_only=True)
    assert a["method_state"]["log"] == b["method_state"]["log"]
    for key, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][key]), key
    ra, rb = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "k"))
    assert ra["budget_report"]["widths"] == rb["budget_report"]["widths"]
    for key in ("dense_test_acc", "pruned_test_acc_before_finetune", "extracted_test_acc", "final_test_acc"):
        assert key in ra
    assert ra["extracted_test_acc"] == ra["pruned_test_acc_before_finetune"]
    assert "extracted" in ra["summary"]
    run = tmp_path / "whole"
    assert (run / "pruned" / "plan.json").exists() and json.loads((run / "pruned" / "plan.json").read_text())["kind"] == "generated"
    assert (run / "compact" / "plan.json").exists() and (run / "structure.json").exists()
    assert "static model" in cli("eval", str(run)).stdout
    assert "finished stages: pretrain, learn, prune, finetune" in cli("info", str(run)).stdout
