"""``results_with_part``: a part run on its own (``--parts dense,rank``) after the rest of a study was
committed is read from the ``.partial.json`` beside the study's file, and only when that file holds it."""

import json

import pytest

from prunelab import experiments


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RESULTS_DIR", tmp_path)
    return tmp_path


def _write(path, **d):
    path.write_text(json.dumps(d))


def test_the_main_file_wins_when_it_holds_the_part(results_dir):
    main = {"scale": "cpu", "parts": ["dense", "rank"], "rank": {"l1/s0": {}}}
    _write(results_dir / "ddnp_cpu.partial.json", scale="cpu", parts=["dense", "rank"], rank={"l1/s1": {}})
    assert experiments.results_with_part(main, "ddnp", "cpu", "rank") is main


def test_the_partial_sibling_is_read_when_the_main_file_lacks_the_part(results_dir):
    main = {"scale": "cpu", "parts": ["dense", "lambda"], "rank": {}}
    _write(results_dir / "ddnp_cpu.partial.json", scale="cpu", parts=["dense", "rank"], rank={"l1/s1": {"x": 1}})
    got = experiments.results_with_part(main, "ddnp", "cpu", "rank")
    assert got["rank"] == {"l1/s1": {"x": 1}}
    # read as a results file of its own: a notebook that used it records its fingerprint
    assert any(k.endswith("ddnp_cpu.partial.json") for k in experiments.results_read())


@pytest.mark.parametrize("partial", [None, {"scale": "ci", "parts": ["rank"], "rank": {"a": 1}},
                                     {"scale": "cpu", "parts": ["rank"], "rank": {}},
                                     {"scale": "cpu", "parts": ["dense"]}])
def test_the_main_file_is_kept_when_the_sibling_does_not_hold_the_part(results_dir, partial):
    main = {"scale": "cpu", "parts": ["dense"]}
    if partial is not None:
        _write(results_dir / "ddnp_cpu.partial.json", **partial)
    assert experiments.results_with_part(main, "ddnp", "cpu", "rank") is main
