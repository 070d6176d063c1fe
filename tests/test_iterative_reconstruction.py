"""VQ and ID under BAR's iterative scheme (prunelab/workflows/iterative.py, ``ShrinkVQ``/``ShrinkID``;
docs/decisions.md L29): which channels each keeps, and that the compacted network with the next layer
rewritten equals the network before the block middles were pruned wherever the pruned channels are exact
copies of kept ones (the equivalence the two reconstructions promise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab import models
from prunelab.experiments import bar_study as B
from prunelab.methods.vq import read_by_one_conv
from prunelab.pruning.compact import compact, expand
from prunelab.pruning.structure import Structure
from prunelab.workflows.iterative import halve, shrink_rule


def _net_with_duplicate_middles(seed=0):
    """BAR's ci WRN in eval mode, random BN statistics, every block middle's channel 2i+1 an exact copy of
    channel 2i (its conv filter and its BN)."""
    cfg = B.teacher_config("ci")
    torch.manual_seed(seed)
    net = models.create(cfg.model.name, **cfg.model.kwargs)
    spec = models.describe(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
        for t in spec.tensors:
            if read_by_one_conv(spec, t):
                conv, bn = net.get_submodule(t.conv), net.get_submodule(t.module)
                for p in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    p[1::2] = p[0::2]
    return net.eval(), spec, cfg


def _data(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, 32, 32, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def _call(rule, structure, spec, net):
    kw = {"data": _data()} if rule.needs_data else {}
    return rule(structure, spec, net, np.random.default_rng(0), **kw)


@pytest.mark.parametrize("name", ["vq", "id"])
def test_duplicate_middles_are_merged_exactly(name):
    net, spec, cfg = _net_with_duplicate_middles()
    full = Structure.full(spec, model_kwargs=cfg.model.kwargs)
    rule = shrink_rule(name)
    new = _call(rule, full, spec, net)
    middles = [t.name for t in spec.tensors if read_by_one_conv(spec, t)]
    assert middles and all(len(new.alive[m]) == spec.tensor(m).channels // 2 for m in middles)
    if name == "vq":  # k-means with as many clusters as distinct filters: one channel of every pair is kept
        # (ID may keep both of a pair instead of a channel that ReLU leaves at zero on these images: the
        # reconstruction is exact either way, which is what is checked below)
        for m in middles:
            assert sorted(np.asarray(new.alive[m]) // 2) == list(range(spec.tensor(m).channels // 2)), m
    # the middles pruned with the next layer rewritten == the middles not pruned at all
    middles_full = new.with_alive({m: np.arange(spec.tensor(m).channels) for m in middles})
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        got = compact(rule.reconstructed(net, spec, new), new).eval()(x)
        want = compact(net, middles_full).eval()(x)
        plain = compact(net, new).eval()(x)  # the same channels removed without the rewrite
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert not torch.allclose(plain, want, atol=1e-3)  # the rewrite is what makes them equal


@pytest.mark.parametrize("name", ["vq", "id"])
def test_tensors_no_single_conv_reads_are_halved_by_wm(name):
    net, spec, cfg = _net_with_duplicate_middles()
    full = Structure.full(spec, model_kwargs=cfg.model.kwargs)
    from prunelab.methods.l1 import l1_scores

    new = _call(shrink_rule(name), full, spec, net)
    wm = halve(full, spec, l1_scores(net, spec), np.random.default_rng(0))
    others = [t.name for t in spec.tensors if not read_by_one_conv(spec, t)]
    assert others and all(np.array_equal(new.alive[n], wm.alive[n]) for n in others)


@pytest.mark.parametrize("name", ["vq", "id"])
def test_a_second_step_chooses_among_the_alive_channels_of_the_expanded_network(name):
    """The iterative scheme's second step sees the retrained compact network expanded back with zeros:
    it keeps half of the channels still alive and its rewrite touches only their columns."""
    net, spec, cfg = _net_with_duplicate_middles()
    full = Structure.full(spec, model_kwargs=cfg.model.kwargs)
    rule = shrink_rule(name)
    s1 = _call(rule, full, spec, net)
    dense = expand(compact(rule.reconstructed(net, spec, s1), s1), s1).eval()
    s2 = _call(rule, s1, spec, dense)
    for n in s1.alive:
        assert len(s2.alive[n]) == max(1, len(s1.alive[n]) // 2) and set(s2.alive[n]) <= set(s1.alive[n]), n
    out = rule.reconstructed(dense, spec, s2)
    for m in (t.name for t in spec.tensors if read_by_one_conv(spec, t)):
        (op,) = [o for o in spec.ops if m in o.reads]
        dead = np.setdiff1d(np.arange(spec.tensor(m).channels), s1.alive[m])
        w = out.get_submodule(op.name).weight
        assert torch.count_nonzero(w[:, dead]) == 0, m


def test_an_id_chain_runs_as_a_study_sub_run(tmp_path):
    """The ``iterative`` task path with a rule that reads data: one ID step on ci data, its record, and a
    second call that adopts the finished step without training again."""
    from prunelab.config import deep_merge, load_config
    from prunelab.train.trainer import weights_payload
    from prunelab.workflows.iterative import run_iterative

    net, spec, _ = _net_with_duplicate_middles()
    torch.save(weights_payload(net), tmp_path / "teacher.pt")
    cfg = load_config("bar_wrn_teacher", "ci", overrides=deep_merge(B.PROGRESS, {"train": {"epochs": 1, "max_steps": 1}}))
    opts = {"shrink": "id", "steps": 1, "init_from": str(tmp_path / "teacher.pt"), "stage": "id"}
    res = run_iterative(cfg, tmp_path / "chain", opts)
    assert res["shrink"] == "id" and len(res["steps"]) == 1
    plan = Structure.load(tmp_path / "chain" / "step1" / "compact" / "plan.json")
    assert all(len(plan.alive[t.name]) == t.channels // 2 for t in spec.tensors)
    stamp = (tmp_path / "chain" / "step1" / "compact" / "weights.pt").stat().st_mtime_ns
    assert run_iterative(cfg, tmp_path / "chain", opts)["steps"] == res["steps"]
    assert (tmp_path / "chain" / "step1" / "compact" / "weights.pt").stat().st_mtime_ns == stamp
