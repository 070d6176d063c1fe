"""``prunelab.analysis.compare.points`` (notebook 06): every method on one counter, including DDNP's
equal-budget ranking (from the study's own file or the rank part's) and BAR (F-trained)."""

from __future__ import annotations

import functools

from prunelab import models
from prunelab.analysis.compare import points
from prunelab.pruning.structure import Structure


@functools.lru_cache(maxsize=None)
def _spec(model, kwargs=()):
    return models.describe(models.create(model, **dict(kwargs)))


def spec_of(model, kwargs):
    return _spec(model, tuple(sorted(kwargs.items())))


def _rank_study(methods=("ddnp", "l1", "hrank"), seeds=(0, 1)):
    spec = _spec("resnet20")
    layers = [t.name for t in spec.select("mid")]
    rank = {}
    for m in methods:
        for s in seeds:
            rank[f"{m}/s{s}"] = {"method": m, "seed": s, "finetuned_test_acc": 0.8 + 0.01 * s, "dense_test_acc": 0.9,
                                 "widths": [spec.tensor(n).channels // 2 for n in layers]}
    return {"model": "resnet20", "scale": "cpu", "layers": layers, "runs": {}, "rank": rank,
            "scale_settings": {"rank_finetune_epochs": 8}}


def test_the_rank_part_gives_one_point_per_method_over_its_seeds():
    pts = [p for p in points({"ddnp": _rank_study()}, spec_of) if "(rank)" in p["setting"]]
    assert sorted(p["method"] for p in pts) == ["DDNP", "HRank", "l1"]
    for p in pts:
        assert p["n"] == 2 and abs(p["accuracy"] - 0.805) < 1e-9 and p["stage"] == "fine-tuned 8 epochs"
        assert 0.2 < p["macs_keep"] < 0.9  # recounted from the widths, not read from the record


def test_the_rank_part_in_a_file_of_its_own_is_used_and_not_counted_twice():
    main = {**_rank_study(), "rank": {}}
    pts = points({"ddnp": main, "ddnp_rank": _rank_study(methods=("chip",))}, spec_of)
    assert [p["method"] for p in pts if "(rank)" in p["setting"]] == ["CHIP"]


def test_bar_f_trained_rows_are_points_of_their_own():
    spec = _spec("bar_wrn", (("blocks_per_stage", 1), ("k", 1)))
    full = Structure.full(spec, model_kwargs={"k": 1, "blocks_per_stage": 1}).to_dict()
    row = {"pf": 16, "accuracy": 0.7, "structure": full}
    bar = {"scale": "cpu", "teacher": {"accuracy": 0.8}, "runs": [{**row, "pf": 4}], "baselines": [],
           "flop_runs": [row]}
    pts = points({"bar": bar}, spec_of)
    assert {(p["method"], p["setting"]) for p in pts} == {("BAR", "PF 4"), ("BAR (F-trained)", "F-factor 16")}
