"""The ManiDP study at ci scale: every sub-run (dynamic with and without L_sim, static mask, l1), the
static mask matched to the dynamic widths, damaged or misfiled sub-runs skipped by name, and finished
sub-runs reused from the committed results on a machine that no longer has them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from prunelab import models
from prunelab.experiments import manidp_study


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
    assert not res["complete"]
    assert any(m.startswith("ManiDP without_sim seed 0 (damaged") for m in res["missing"]), res["missing"]
    assert {r["variant"] for r in res["runs"]} == {"with_sim", "static", "l1"}  # the others are still collected


def test_a_subrun_of_another_variant_is_refused(study, tmp_path):
    root, _ = study
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    shutil.rmtree(runs / "manidp-without_sim-s0")
    shutil.copytree(runs / "manidp-with_sim-s0", runs / "manidp-without_sim-s0")  # lambda_sim 1 filed as 0
    res = _collect(root, runs, tmp_path / "out.json")
    assert any("refused" in m and "lambda_sim" in m for m in res["missing"]), res["missing"]
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
