"""The BAR study on the study runner (prunelab/experiments/bar_study.py), its iterative task kind and the
shrink rules of its baselines (prunelab/workflows/iterative.py), and the one L1 score (methods/l1.py).
No long training: the plan is only built, and one baseline chain runs a few steps on ci data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab import models
from prunelab.errors import ConfigError
from prunelab.experiments import bar_study as B
from prunelab.experiments import runner as R
from prunelab.pruning.structure import Structure
from prunelab.workflows.iterative import SHRINK_RULES, read_steps, shrink_random, shrink_rule, shrink_wm

REPO = Path(__file__).resolve().parents[1]


def _net(seed=0):
    cfg = B.teacher_config("ci")
    torch.manual_seed(seed)
    net = models.create(cfg.model.name, **cfg.model.kwargs)
    return net, models.describe(net), cfg


# ---------------------------------------------------------------------------------------------------
# the plan


@pytest.mark.parametrize("scale", ["ci", "cpu", "paper"])
def test_the_plan_builds_every_config_and_option(tmp_path, scale):
    run = R.Runner("bar", scale, tmp_path / "runs", results=tmp_path / "none.json")
    states = run.configs()
    # IB's probes after the first, and its final run, take their kl_weight from the probes before them
    later = [st for st in states if st.sub.name.startswith("ib-") and not st.sub.name.endswith("probe0")]
    assert all(st.config is None and "needs the record of ib-" in st.note and st.sub.epochs for st in later)
    states = [st for st in states if st not in later]
    assert states and all(st.config is not None for st in states), [st.note for st in states if st.config is None]
    names = [st.sub.name for st in states]
    assert names[0] == "teacher" and len(set(names)) == len(names)
    s = B.SETTINGS[scale]
    assert {n for n in names if n.startswith("bar-v")} == {f"bar-v{pf}" for pf in B.PRUNING_FACTORS}
    assert [n for n in names if n.startswith("sensitivity")] == [
        f"sensitivity-v{pf}-{i}" for pf in s["sensitivity_factors"] for i in range(s["sensitivity_runs"])]
    # PF 4 and 8 (the comparison) before the baselines, the rest after
    assert names[1:3] == ["bar-v4", "bar-v8"]
    chains = [st for st in states if st.sub.kind == "iterative"]
    assert [st.sub.name for st in chains] == [B.baseline_subrun(k, kd) for k, kd in s["baselines"]]
    for st in chains:
        o = st.options
        assert o["shrink"] in SHRINK_RULES and o["steps"] == len(B.PRUNING_FACTORS)
        assert o["init_from"] == str(tmp_path / "runs" / "teacher" / "model.pt")
        assert ("teacher" in o) == st.sub.name.endswith("-kd")
        assert st.sub.needs == ("teacher",)
        assert R.stage_epochs(st.config, "iterative", o) == s["baseline_epochs"] * len(B.PRUNING_FACTORS)
    for st in states[1:]:
        assert st.sub.needs == ("teacher",)


def test_the_cpu_plan_lists_the_subruns_of_the_committed_results(tmp_path):
    committed = json.loads((REPO / "results" / "bar_cpu.json").read_text())
    rows = committed["runs"] + committed["baselines"] + committed["sensitivity"]
    names = [s.name for s in R.Runner("bar", "cpu", tmp_path / "runs", results=tmp_path / "none.json").subs]
    # sub-runs added to the plan after these results were made (not yet run) are named here
    added = ({"wm-kd", "vq-kd", "id-kd"} | {f"bar-f{ff}" for ff in B.FLOP_FACTORS}
             | {f"morphnet-v{pf}" for pf in B.PRUNING_FACTORS} | {f"ib-v{pf}" for pf in B.PRUNING_FACTORS}
             | {f"ib-v{pf}-probe{i}" for pf in B.PRUNING_FACTORS for i in range(B.SETTINGS["cpu"]["ib_probes"])})
    assert set(names) - added == {"teacher"} | {r["subrun"] for r in rows}


def test_parts_choose_the_subruns_and_the_teacher_is_always_planned(tmp_path):
    names = [s.name for s in B.BARStudy().subruns("ci", ("baselines",))]
    assert names == ["teacher", "random-kd", "random"]
    names = [s.name for s in B.BARStudy().subruns("ci", ("teacher", "bar"))]
    assert names == ["teacher", "bar-v4", "bar-v8", "bar-v2", "bar-v16"]
    names = [s.name for s in B.BARStudy().subruns("cpu", ("flops",))]
    assert names == ["teacher"] + [f"bar-f{ff}" for ff in B.FLOP_FACTORS]
    names = [s.name for s in B.BARStudy().subruns("ci", ("morphnet", "ib"))]
    assert names == ["teacher", "morphnet-v4", "ib-v4-probe0", "ib-v4-probe1", "ib-v4"]


def test_ib_bisection_brackets_then_halves_in_log_space():
    assert B.next_kl_weight([], 4, 1e-4) == 1e-4
    # every probe pruned too little: ten times the largest weight; too much: a tenth of the smallest
    assert B.next_kl_weight([(1e-4, 2.0)], 4, 1e-4) == pytest.approx(1e-3)
    assert B.next_kl_weight([(1e-4, 9.0), (1e-3, 20.0)], 4, 1e-4) == pytest.approx(1e-5)
    # bracketed: the geometric mean of the tightest bracket
    h = [(1e-4, 2.0), (1e-3, 10.0), (1e-2, 30.0)]
    assert B.next_kl_weight(h, 4, 1e-4) == pytest.approx(np.sqrt(1e-4 * 1e-3))
    h.append((np.sqrt(1e-7), 5.0))
    assert B.next_kl_weight(h, 4, 1e-4) == pytest.approx(np.sqrt(1e-4 * np.sqrt(1e-7)))
    # the row takes the probe nearest the factor in log scale
    assert B.best_probe(h, 4) == pytest.approx(np.sqrt(1e-7))
    assert B.best_probe([(1.0, 2.0), (2.0, 8.0)], 4) == 1.0  # a tie goes to the smaller weight


def test_a_baseline_short_of_the_factor_does_not_count_in_the_claim():
    from prunelab.analysis.bar import claims

    spec = B.models.describe(B.models.create("bar_wrn", k=1, blocks_per_stage=1))
    full = Structure.full(spec, model_kwargs={"k": 1, "blocks_per_stage": 1}).to_dict()
    res = {"runs": [{"pf": 4, "accuracy": 0.8, "structure": full, "v_factor": 4.0}],
           "baselines": [{"method": "IB", "pf": 4, "accuracy": 0.9, "v_factor": 2.0},
                         {"method": "Random + KD", "pf": 4, "accuracy": 0.7, "v_factor": 4.0}]}
    c = next(c for c in claims(res, spec) if c.get("id") == "bar_best_at_v4")
    assert c["holds"] and c["short_of_the_factor"] == {"IB": 2.0} and c["baselines"] == {"Random + KD": 0.7}
    res["baselines"][0]["v_factor"] = 3.9  # within 10 % of the factor: it counts, and beats BAR
    c = next(c for c in claims(res, spec) if c.get("id") == "bar_best_at_v4")
    assert not c["holds"]


def test_the_f_trained_runs_differ_from_the_volume_runs_only_in_their_budget(tmp_path):
    deps = R.Deps(tmp_path, {})
    v, f = B.bar_config("cpu", deps, 16), B.bar_config("cpu", deps, 16, metric="flops")
    assert (v.budget["metric"], f.budget["metric"]) == ("volume", "flops")
    dv, df = v.to_dict(), f.to_dict()
    dv.pop("budget"), df.pop("budget")
    assert dv == df
    assert R.fingerprint(v, ["t"]) != R.fingerprint(f, ["t"])


def test_fingerprints_ignore_paths_and_tell_the_baselines_apart(tmp_path):
    a, b = R.Deps(tmp_path / "a", {}), R.Deps(tmp_path / "b", {})
    # BAR's teacher and warm-start paths are inputs (the teacher's own fingerprint stands for them)
    assert R.fingerprint(B.bar_config("ci", a, 4), ["t"]) == R.fingerprint(B.bar_config("ci", b, 4), ["t"])
    assert R.fingerprint(B.bar_config("ci", a, 4), ["t"]) != R.fingerprint(B.bar_config("ci", a, 8), ["t"])
    cfg = B.baseline_config("ci")
    fp = {(k, kd, d): R.fingerprint(cfg, ["t"], B.baseline_options(k, kd, deps), "iterative")
          for k in ("random", "wm") for kd in (True, False) for d, deps in (("a", a), ("b", b))}
    assert all(fp[(k, kd, "a")] == fp[(k, kd, "b")] for k in ("random", "wm") for kd in (True, False))
    assert len({fp[(k, kd, "a")] for k in ("random", "wm") for kd in (True, False)}) == 4
    # a sub-run without options hashes as before options existed (committed records stay reusable)
    assert R.fingerprint(cfg, ["t"], {}) == R.fingerprint(cfg, ["t"])


def test_aggregate_without_a_teacher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="teacher"):
        B.BARStudy().aggregate("ci", B.PARTS, {}, tmp_path)


def test_the_iterative_kind_is_known_to_tasks_and_subruns():
    from prunelab.experiments.tasks import Task

    t = Task("bar", "random", "iterative", None, "r", "l", options={"shrink": "random"})
    assert t.options == {"shrink": "random"}
    assert Task("bar", "teacher", "train", None, "r", "l").options == {}
    with pytest.raises(ValueError, match="kind"):
        R.SubRun("x", "shrink", lambda deps: None)


# ---------------------------------------------------------------------------------------------------
# shrink rules and the one L1 score


def test_l1_scores_are_the_filter_norms_computed_as_before():
    from prunelab.methods import create
    from prunelab.methods.l1 import l1_scores

    net, spec, _ = _net()
    got = l1_scores(net, spec)
    assert list(got) == [t.name for t in spec.tensors]
    for t in spec.tensors:  # the expression the study and DDNP each had a copy of, bit for bit
        ref = net.get_submodule(t.conv).weight.detach().abs().flatten(1).sum(1).double().numpy()
        assert got[t.name].dtype == np.float64 and np.array_equal(got[t.name], ref)
    raw = create("l1", normalize="none").scores(net, spec)
    assert all(np.array_equal(raw[n], got[n]) for n in raw)


def test_shrink_rules_are_registered_by_name():
    from prunelab.workflows.iterative import ShrinkID, ShrinkVQ

    assert SHRINK_RULES == {"random": shrink_random, "wm": shrink_wm, "vq": ShrinkVQ, "id": ShrinkID}
    assert shrink_rule("wm") is shrink_wm and all(f.__doc__ for f in SHRINK_RULES.values())
    # a rule class gives a fresh rule each time (it keeps what its last call chose)
    assert isinstance(shrink_rule("vq"), ShrinkVQ) and shrink_rule("vq") is not shrink_rule("vq")
    with pytest.raises(KeyError, match="unknown shrink rule"):
        shrink_rule("magnitude")


def _groups(spec):
    trunk_of = {n: tid for tid, members in spec.trunks().items() for n in members}
    groups = {}
    for t in spec.tensors:
        groups.setdefault(trunk_of.get(t.name, t.name), []).append(t.name)
    return list(groups.values())


def test_wm_keeps_the_half_with_the_largest_l1_norm_and_trunks_share_a_mask():
    from prunelab.methods.l1 import l1_scores

    net, spec, cfg = _net()
    full = Structure.full(spec, model_kwargs=cfg.model.kwargs)
    scores = l1_scores(net, spec)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    s = shrink_wm(full, spec, net, rng)
    assert rng.bit_generator.state == state  # WM draws nothing
    for members in _groups(spec):
        total = np.sum([scores[m] for m in members], axis=0)
        n = max(1, len(total) // 2)
        want = np.sort(np.argsort(-total, kind="stable")[:n])
        for m in members:
            assert np.array_equal(s.alive[m], want), m
    # a second step halves what is left, again by the norms of the alive channels
    s2 = shrink_wm(s, spec, net, rng)
    assert all(len(s2.alive[n]) == max(1, len(s.alive[n]) // 2) and set(s2.alive[n]) <= set(s.alive[n])
               for n in s.alive)


def test_random_is_seeded_and_halves_every_tensor():
    net, spec, cfg = _net()
    full = Structure.full(spec, model_kwargs=cfg.model.kwargs)
    a = shrink_random(full, spec, net, np.random.default_rng(0))
    b = shrink_random(full, spec, None, np.random.default_rng(0))  # the network is not looked at
    c = shrink_random(full, spec, net, np.random.default_rng(1))
    assert a.to_dict() == b.to_dict() and a.to_dict() != c.to_dict()
    assert all(len(a.alive[n]) == max(1, spec.tensor(n).channels // 2) for n in a.alive)
    for members in _groups(spec):
        assert all(np.array_equal(a.alive[m], a.alive[members[0]]) for m in members)


# ---------------------------------------------------------------------------------------------------
# a chain as one sub-run (a few steps of ci data)


def test_run_iterative_adopts_a_chain_of_finished_steps_without_training(tmp_path):
    """A chain folder of the study before the runner (steps only, no result.json) is finished by
    run_iterative without training again, and its record reads the same rows iterative_prune returned."""
    from prunelab.config import deep_merge, load_config
    from prunelab.train.trainer import weights_payload
    from prunelab.workflows import iterative_prune
    from prunelab.workflows.iterative import run_iterative

    net, spec, _ = _net()
    torch.save(weights_payload(net), tmp_path / "teacher.pt")
    cfg = load_config("bar_wrn_teacher", "ci", overrides=deep_merge(B.PROGRESS, {"train": {"epochs": 1, "max_steps": 1}}))
    rows = iterative_prune(cfg, tmp_path / "chain", init_from=tmp_path / "teacher.pt", steps=2, shrink=shrink_wm,
                           stage="wm", say=lambda *a: None)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "chain").rglob("weights.pt")}
    assert len(stamps) == 2
    res = run_iterative(cfg, tmp_path / "chain", {"shrink": "wm", "steps": 2, "init_from": str(tmp_path / "teacher.pt"),
                                                  "stage": "wm"})
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "chain").rglob("weights.pt")} == stamps  # not retrained
    assert (tmp_path / "chain" / "result.json").exists() and (tmp_path / "chain" / "config.yaml").exists()
    assert [s["final_test_acc"] for s in res["steps"]] == [r["accuracy"] for r in rows]
    again = read_steps(tmp_path / "chain")
    assert [r["structure"].to_dict() for r in again] == [r["structure"].to_dict() for r in rows]
    assert [(r["accuracy"], r["accuracy_before_finetune"], r["metrics"]) for r in again] == \
        [(r["accuracy"], r["accuracy_before_finetune"], r["metrics"]) for r in rows]
    assert R.filed_elsewhere(tmp_path / "chain", cfg) is None


def test_a_study_on_a_fresh_machine_reuses_the_committed_records(tmp_path):
    """The session-loss case: runs/ is gone, the results file is not. Every sub-run (the teacher too) is
    taken from the committed records (the teacher's path in BAR's configs is not part of a fingerprint),
    nothing is trained, and the rows are the same."""
    from prunelab.experiments import run

    first = run("bar", "ci", tmp_path / "runs1", quiet=True, results=tmp_path / "bar.json", parts=["teacher", "bar"])
    again = run("bar", "ci", tmp_path / "runs2", quiet=True, results=tmp_path / "bar.json", parts=["teacher", "bar"])
    assert again["teacher"]["weights_sha256"] == first["teacher"]["weights_sha256"]
    assert sorted(again["reused_subruns"]) == sorted(["teacher"] + [r["subrun"] for r in first["runs"]]) and first["runs"]
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in first["runs"]]
    assert [r["structure"] for r in again["runs"]] == [r["structure"] for r in first["runs"]]
    assert not (tmp_path / "runs2").exists()  # nothing trained again
