"""The ManiDP study at ci scale, on the study runner: every sub-run (dynamic with and without L_sim,
static mask, l1), the static mask matched to the dynamic widths, the controls' dependencies on the
with-L_sim runs, damaged or misfiled sub-runs skipped by name, and finished sub-runs (records and arrays)
reused from the committed results on a machine that no longer has them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from prunelab import models
from prunelab.experiments import manidp_study
from prunelab.utils import to_jsonable


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("manidp-ci")
    res = manidp_study.run("ci", root / "runs", quiet=True, results=root / "manidp_ci.json")
    return root, res


def _collect(root, runs=None, results=None):
    return manidp_study.run("ci", runs or root / "runs", quiet=True, collect=True,
                            results=results or root / "manidp_ci.json")


def test_every_subrun_and_matched_controls(study):
    _, res = study
    assert res["complete"] and not res["missing"]
    kinds = sorted((r["variant"], r["seed"]) for r in res["runs"])
    assert kinds == [("l1", 0), ("static", 0), ("with_sim", 0), ("without_sim", 0)]
    dyn = next(r for r in res["runs"] if r["variant"] == "with_sim")
    static = next(r for r in res["runs"] if r["variant"] == "static")
    # the static mask keeps the dynamic network's mean widths (rounded), the channels it kept most often
    assert [len(static["plan"]["alive"][n]) for n in res["layers"]] == [max(1, round(k)) for k in dyn["mean_kept"]]
    spec = models.describe(models.create("resnet20"))
    plan = manidp_study.static_plan(spec, res["layers"], dyn)
    assert {n: list(v) for n, v in plan.alive.items()} == static["plan"]["alive"]
    # and costs what the dynamic network costs on average, within the rounding of the widths
    assert abs(static["mean_macs"] - dyn["mean_macs"]) / dyn["mean_macs"] < 0.05
    l1 = next(r for r in res["runs"] if r["variant"] == "l1")
    assert abs(l1["mean_macs"] - dyn["mean_macs"]) / dyn["mean_macs"] < 0.02
    for r in res["runs"]:  # every sub-run logs accuracy at every epoch
        assert len(r["metrics"]) == 4 and all("test_acc" in m for m in r["metrics"])
    assert all({"jaccard_mean", "test_macs_std", "kept_ratio_mean"} <= set(m) for m in dyn["metrics"])


def test_arrays_are_float32_triangles_and_kept_sets(study):
    root, res = study
    a = np.load(root / "manidp_ci.npz")
    sim = a["with_sim/similarity_end"]
    assert sim.dtype == np.float32 and sim.ndim == 3 and sim.shape[:2] == (len(res["layers"]), 2)
    from prunelab.analysis.manidp import full_matrix, kept_sets

    full = full_matrix(sim)
    assert np.allclose(full, np.swapaxes(full, -1, -2)) and np.allclose(np.diagonal(full, axis1=-2, axis2=-1), 1)
    alive = kept_sets(a, "with_sim", res["channels"])
    kept = a["with_sim/test_kept"][a["with_sim/test_masks_rows"]]
    bounds = np.cumsum([0] + res["channels"])
    counted = np.stack([alive[:, lo:hi].sum(1) for lo, hi in zip(bounds[:-1], bounds[1:])], 1)
    assert (counted == kept).all()  # the kept sets agree with the kept counts, image by image


@pytest.mark.parametrize("damage", ["result_garbage", "result_list", "result_missing_key", "learn_truncated",
                                    "array_missing", "array_garbage"])
def test_a_damaged_subrun_is_skipped_by_name(study, tmp_path, damage):
    root, _ = study
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    d = runs / "manidp-without_sim-s0"
    if damage == "result_garbage":
        (d / "result.json").write_text("{not json")
    elif damage == "result_list":
        (d / "result.json").write_text("[]")
    elif damage == "result_missing_key":
        r = json.loads((d / "result.json").read_text())
        del r["final_test_acc"]
        (d / "result.json").write_text(json.dumps(r))
    elif damage == "learn_truncated":
        (d / "learn.pt").write_bytes((d / "learn.pt").read_bytes()[:100])
    elif damage == "array_missing":
        (d / "arrays" / "manidp_test_kept.npy").unlink()
    else:
        (d / "arrays" / "manidp_weights.npy").write_bytes(b"garbage")
    res = _collect(root, runs, tmp_path / "out.json")
    assert not res["complete"] and res["missing"] == ["ManiDP without_sim seed 0"]
    assert res["why_missing"]["ManiDP without_sim seed 0"].startswith("missing: damaged"), res["why_missing"]
    assert {r["variant"] for r in res["runs"]} == {"with_sim", "static", "l1"}  # the others are still collected


def test_a_subrun_of_another_variant_is_refused(study, tmp_path):
    root, _ = study
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    shutil.rmtree(runs / "manidp-without_sim-s0")
    shutil.copytree(runs / "manidp-with_sim-s0", runs / "manidp-without_sim-s0")  # lambda_sim 1 filed as 0
    res = _collect(root, runs, tmp_path / "out.json")
    assert res["missing"] == ["ManiDP without_sim seed 0"]
    why = res["why_missing"]["ManiDP without_sim seed 0"]
    assert "refused" in why and "lambda_sim" in why, why
    assert "without_sim" not in res["variants"]


def test_committed_subruns_are_reused_on_a_fresh_machine(study, tmp_path):
    root, res = study
    results = tmp_path / "manidp_ci.json"
    shutil.copy(root / "manidp_ci.json", results)
    shutil.copy(root / "manidp_ci.npz", results.with_suffix(".npz"))
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs" / "dense", runs / "dense")  # a fresh machine retrains only the dense checkpoint
    again = _collect(root, runs, results)
    assert again["complete"] and sorted(again["reused_subruns"]) == sorted(r["subrun"] for r in res["runs"])
    assert [r["final_test_acc"] for r in again["runs"]] == [r["final_test_acc"] for r in res["runs"]]
    old, new = np.load(root / "manidp_ci.npz"), np.load(results.with_suffix(".npz"))
    assert sorted(old.files) == sorted(new.files)
    assert all(np.array_equal(old[k], new[k], equal_nan=True) for k in old.files)


def test_committed_subruns_and_arrays_are_reused_without_any_run_directory(study, tmp_path):
    root, res = study
    results = tmp_path / "manidp_ci.json"
    shutil.copy(root / "manidp_ci.json", results)
    shutil.copy(root / "manidp_ci.npz", results.with_suffix(".npz"))
    again = _collect(root, tmp_path / "runs", results)  # not even the dense checkpoint
    assert again["complete"] and sorted(again["reused_subruns"]) == sorted(["dense"] + [r["subrun"] for r in res["runs"]])
    assert again["dense"] == res["dense"] and again["runs"] == json.loads(json.dumps(to_jsonable(res["runs"])))
    old, new = np.load(root / "manidp_ci.npz"), np.load(results.with_suffix(".npz"))
    assert sorted(old.files) == sorted(new.files)
    assert all(np.array_equal(old[k], new[k], equal_nan=True) for k in old.files)


def test_a_record_whose_arrays_are_gone_is_not_reused(study, tmp_path):
    root, _ = study
    results = tmp_path / "manidp_ci.json"
    shutil.copy(root / "manidp_ci.json", results)  # the JSON without its NPZ
    again = _collect(root, tmp_path / "runs", results)
    # the sub-runs with arrays (dense, the dynamic runs) cannot be reused; the controls can (their needs
    # are then missing, so they wait)
    assert not again["complete"] and again["reused_subruns"] == []
    assert again["why_missing"]["static mask seed 0"].startswith("waiting")


def test_the_plan_lists_every_subrun_with_the_controls_needing_their_dynamic_run(tmp_path):
    from prunelab.experiments.runner import Runner, plan_table

    r = Runner("manidp", "cpu", tmp_path / "runs", results=tmp_path / "none.json", quiet=True)
    needs = {s.name: s.needs for s in r.subs}
    assert needs == {"dense": (), "manidp-with_sim-s0": ("dense",), "manidp-with_sim-s1": ("dense",),
                     "manidp-without_sim-s0": ("dense",), "static-s0": ("dense", "manidp-with_sim-s0"),
                     "static-s1": ("dense", "manidp-with_sim-s1"), "l1-s0": ("dense", "manidp-with_sim-s0")}
    table = plan_table(r.plan())
    assert "static-s1" in table and "ready: 1" in table and "waiting: 6" in table
    assert not (tmp_path / "runs").exists()  # planning trains and writes nothing
    # only the controls asked for: the with-L_sim runs they are made from are in the plan, without_sim is not
    r = Runner("manidp", "cpu", tmp_path / "runs", parts=["static"], results=tmp_path / "none.json", quiet=True)
    assert [s.name for s in r.subs] == ["dense", "manidp-with_sim-s0", "manidp-with_sim-s1", "static-s0", "static-s1"]


def test_the_static_plan_is_written_from_the_dynamic_record_before_the_control_trains(study):
    root, res = study
    dyn = next(r for r in res["runs"] if r["variant"] == "with_sim")
    written = json.loads((root / "runs" / "plans" / "static-s0.json").read_text())
    assert written["alive"] == next(r for r in res["runs"] if r["variant"] == "static")["plan"]["alive"]
    assert {n: len(v) for n, v in written["alive"].items()} == {
        n: max(1, round(k)) for n, k in zip(res["layers"], dyn["mean_kept"])}


def test_a_control_retrains_only_the_dense_checkpoint_not_the_reused_run_it_is_made_from(study, tmp_path):
    from prunelab.experiments.runner import Runner

    root, _ = study
    committed = json.loads((root / "manidp_ci.json").read_text())
    del committed["subruns"]["static-s0"]  # the control is not in the committed results
    (tmp_path / "manidp_ci.json").write_text(json.dumps(committed))
    shutil.copy(root / "manidp_ci.npz", tmp_path / "manidp_ci.npz")
    r = Runner("manidp", "ci", tmp_path / "runs", results=tmp_path / "manidp_ci.json", quiet=True)
    states = {st.sub.name: st.state for st in r.plan()}
    # the static mask reads only the record of manidp-with_sim-s0 (reused) and the folder of dense (rerun)
    assert states["manidp-with_sim-s0"] == "reused" and states["dense"] == "ready"
    assert states["static-s0"] == "waiting", states
