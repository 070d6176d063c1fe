"""The study runner (prunelab/experiments/runner.py): plans, dependencies, reuse by fingerprint, executors,
shards, failures, --plan and --dry-run, on a tiny study of three real ci-scale sub-runs."""

from __future__ import annotations

import json
import shutil

import pytest

from prunelab.config import load_config
from prunelab.experiments import runner as R
from prunelab.experiments.executors import LocalExecutor, SequentialExecutor

FAST = {"train": {"epochs": 1, "max_steps": 2, "progress": False}}


def _dense(deps):
    return load_config("resnet20", "ci", overrides=FAST)


def _l1(deps):
    return load_config("resnet20_l1", "ci", overrides={
        **FAST, "stages": {"pretrain": {"init_from": str(deps.dir("dense") / "model.pt")},
                           "finetune": {"train": {"epochs": 1, "max_steps": 2}}}})


def _l1_half(deps):
    # a config that reads another sub-run's record: keep half of what l1 kept
    keep = deps.record("l1")["result"]["budget_report"]["achieved_keep"] / 2
    cfg = _l1(deps)
    cfg.budget = {**cfg.budget, "keep": round(keep, 4)}
    return cfg


class Tiny(R.Study):
    parts = ("dense", "pruned")
    broken = False

    def subruns(self, scale, parts):
        subs = [R.SubRun("dense", "train", _dense, part="dense")]
        if "pruned" in parts:
            subs.append(R.SubRun("l1", "pipeline", _l1, needs=("dense",), part="pruned"))
            subs.append(R.SubRun("l1-half", "pipeline", _l1_half, needs=("dense", "l1"), part="pruned", epochs=2))
            if self.broken:
                subs.append(R.SubRun("broken", "pipeline", lambda deps: load_config("resnet20_l1", "ci", overrides={
                    **FAST, "stages": {"pretrain": {"init_from": str(deps.dir("dense") / "no-such.pt")}}}),
                    needs=("dense",), part="pruned"))
        return subs

    def aggregate(self, scale, parts, records, out):
        return {"acc": {n: r["result"].get("final_test_acc", r["result"].get("final", {}).get("train_loss"))
                        for n, r in records.items()},
                "widths": {n: r.get("widths") for n, r in records.items()}}


@pytest.fixture
def tiny():
    R.register_study("tiny-test")(Tiny)
    Tiny.broken = False
    yield R.STUDIES["tiny-test"]
    R.STUDIES.pop("tiny-test", None)


def _run(tmp, tiny, **kw):
    return R.Runner("tiny-test", "ci", tmp / "runs", results=tmp / "tiny.json", quiet=True, **kw).run()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One sequential run of the tiny study, shared (read-only) by the tests that compare against it."""
    R.register_study("tiny-test")(Tiny)
    try:
        tmp = tmp_path_factory.mktemp("tiny-seq")
        res = _run(tmp, None)
    finally:
        R.STUDIES.pop("tiny-test", None)
    return tmp, res


def test_sequential_run_completes_in_dependency_order(finished):
    tmp, res = finished
    assert res["complete"] and res["missing"] == []
    assert set(res["subruns"]) == {"dense", "l1", "l1-half"}
    assert all(len(e["fingerprint"]) == 64 for e in res["subruns"].values())
    # the record-dependent config really used l1's record
    l1 = res["subruns"]["l1"]["record"]["result"]["budget_report"]["achieved_keep"]
    half = res["subruns"]["l1-half"]["record"]["result"]["budget"]
    assert half["keep"] == pytest.approx(l1 / 2, abs=1e-4)
    written = json.loads((tmp / "tiny.json").read_text())
    assert written["complete"] and written["acc"] == res["acc"]


def test_local_pool_of_two_workers_gives_the_sequential_numbers(finished, tiny, tmp_path):
    _, seq = finished
    ex = LocalExecutor(2, gpus=[], cpu_count=2)
    assert ex.slots == 2 and ex.threads == 1
    res = _run(tmp_path, tiny, executor=ex)
    ex.close()
    assert res["complete"]
    assert res["acc"] == seq["acc"] and res["widths"] == seq["widths"]
    assert (tmp_path / "runs" / "logs" / "l1.log").exists()


def test_committed_records_are_reused_on_a_machine_without_the_runs(finished, tiny, tmp_path):
    src, seq = finished
    shutil.copy(src / "tiny.json", tmp_path / "tiny.json")  # the committed results, no run folders
    res = _run(tmp_path, tiny)
    assert sorted(res["reused_subruns"]) == ["dense", "l1", "l1-half"]
    assert not (tmp_path / "runs" / "dense").exists()  # nothing trained
    assert res["acc"] == seq["acc"] and res["complete"]


def test_a_changed_setting_is_not_reused(finished, tiny, tmp_path, monkeypatch):
    src, _ = finished
    shutil.copy(src / "tiny.json", tmp_path / "tiny.json")
    monkeypatch.setitem(FAST["train"], "max_steps", 1)  # every sub-run's settings change
    res = R.Runner("tiny-test", "ci", tmp_path / "runs", results=tmp_path / "tiny.json", quiet=True,
                   collect=True).run()
    assert res["reused_subruns"] == [] and not res["complete"]
    assert res["why_missing"]["dense"] == "missing"


def test_fingerprint_ignores_where_and_how_a_run_reports_but_not_what_it_computes(tmp_path):
    a = load_config("resnet20_l1", "ci", overrides={"stages": {"pretrain": {"init_from": "x/model.pt"}}})
    b = load_config("resnet20_l1", "ci", overrides={"stages": {"pretrain": {"init_from": "y/model.pt"}},
                                                    "train": {"progress": False, "device": "cpu"}})
    c = load_config("resnet20_l1", "ci", overrides={"budget": {"keep": 0.3}})
    assert R.fingerprint(a, []) == R.fingerprint(b, [])
    assert R.fingerprint(a, []) != R.fingerprint(c, [])
    assert R.fingerprint(a, ["0" * 64]) != R.fingerprint(a, ["1" * 64])  # a need's fingerprint is part of it


def test_a_failed_subrun_names_its_log_and_the_others_finish(tiny, tmp_path):
    Tiny.broken = True
    res = _run(tmp_path, tiny)
    assert not res["complete"] and "broken" in res["failed"]
    log = res["failed"]["broken"]
    assert log.endswith("broken.log") and "no-such.pt" in open(log).read()
    assert set(res["subruns"]) == {"dense", "l1", "l1-half"}


def test_shards_split_the_plan_and_together_complete_it(tiny, tmp_path):
    first = _run(tmp_path, tiny, shard="1/2")  # dense (index 0); l1 is shard 2's; l1-half waits for it
    assert set(first["subruns"]) == {"dense"}
    assert first["why_missing"]["l1"].startswith("other-shard")
    second = _run(tmp_path, tiny, shard="2/2")
    assert set(second["subruns"]) == {"dense", "l1"}
    third = _run(tmp_path, tiny, shard="1/2")
    assert third["complete"]
    with pytest.raises(R.ConfigError, match="k/N"):
        R.parse_shard("3")
    with pytest.raises(R.ConfigError, match="1 <= k <= N"):
        R.parse_shard("3/2")


def test_a_folder_of_another_setting_is_refused_not_aggregated(finished, tiny, tmp_path):
    src, _ = finished
    shutil.copytree(src / "runs" / "dense", tmp_path / "runs" / "dense")
    shutil.copytree(src / "runs" / "dense", tmp_path / "runs" / "l1")  # a dense run filed under l1's name
    res = R.Runner("tiny-test", "ci", tmp_path / "runs", results=tmp_path / "tiny.json", quiet=True,
                   collect=True).run()
    assert "l1" not in res["subruns"]
    assert res["why_missing"]["l1"].startswith("missing: refused: it was run with")


def test_plan_lists_states_without_training(finished, tiny, tmp_path):
    src, _ = finished
    shutil.copytree(src / "runs" / "dense", tmp_path / "runs" / "dense")
    states = R.Runner("tiny-test", "ci", tmp_path / "runs", results=tmp_path / "none.json", quiet=True).plan()
    got = {st.sub.name: st.state for st in states}
    assert got == {"dense": "done", "l1": "ready", "l1-half": "waiting"}
    table = R.plan_table(states)
    assert "l1-half" in table and "needs l1" in table and "done: 1" in table
    assert not (tmp_path / "runs" / "l1").exists()


def test_dry_run_estimates_every_subrun(tiny, monkeypatch):
    from prunelab.experiments import estimate

    monkeypatch.setenv("PRUNELAB_GPU_IMAGES_PER_S", "resnet20=10000")  # no timing in a unit test
    rows = estimate.dry_run_rows("tiny-test", "ci")
    by = {r["subrun"]: r for r in rows}
    assert by["dense"]["epochs"] == 1 and by["dense"]["images"] == 250
    assert by["dense"]["gpu_hours"] == pytest.approx(250 / 10000 / 3600)
    assert by["l1-half"]["gpu_hours"] is None and "l1" in by["l1-half"]["note"]  # its config needs l1's record


def test_pfs_plan_at_paper_scale_builds_every_config():
    states = R.Runner("pfs", "paper", "/nonexistent/pfs-paper", results="/nonexistent/pfs.json", quiet=True).configs()
    assert len(states) > 100 and all(st.config is not None for st in states)
    assert {R.stage_epochs(st.config, st.sub.kind) for st in states if st.sub.name.startswith("pretrain")} == {160}


def test_executor_names_are_checked():
    from prunelab.experiments.executors import make_executor

    assert isinstance(make_executor("local", workers=1), SequentialExecutor) or make_executor("local", workers=1).slots == 1
    with pytest.raises(R.ConfigError, match="unknown executor"):
        make_executor("kubernetes")
