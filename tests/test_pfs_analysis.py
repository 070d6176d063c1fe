"""PFS structure-similarity analysis (docs/decisions.md §3.7, P7) on small synthetic studies."""

import math

import numpy as np
import pytest

from prunelab.analysis.structures import (claims, correlation_matrix, structure_label, structure_matrix,
                                          summarize)

FULL = [16] * 9 + [32] * 9 + [64] * 9  # ResNet-56-like gated layers: enough layers for stable r
EPOCHS = [0, 1, 2, 4, 8]


def _widths(ratios, full=FULL):
    """Integer widths from keep ratios, at least 1 channel per layer (P2)."""
    full = np.asarray(full)
    return np.clip(np.round(np.asarray(ratios) * full), 1, full).astype(int).tolist()


def _study(widths_of):
    """A study dict whose structure for (seed, epoch) has ``widths_of(seed, epoch)``."""
    seeds = [0, 1, 2]
    return {"scale": "ci", "model": "synthetic", "layers": [f"l{i}" for i in range(len(FULL))],
            "full_widths": FULL, "seeds": seeds, "epochs": EPOCHS,
            "structures": [{"seed": s, "epoch": e, "widths": widths_of(s, e)} for s in seeds for e in EPOCHS]}


def study_as_in_supplement():
    """Random structures: independent random widths per seed. Pretrained: a common seed-independent
    profile that drifts slowly with the epoch, plus small per-seed noise."""
    rng = np.random.default_rng(0)
    profile = rng.uniform(0.2, 0.9, len(FULL))
    drift = rng.normal(0, 1, len(FULL))
    drift *= 0.25 / np.abs(drift).max()
    random_ratios = {s: rng.uniform(0.05, 1.0, len(FULL)) for s in range(3)}
    noise = {(s, e): rng.normal(0, 0.02, len(FULL)) for s in range(3) for e in EPOCHS}

    def widths_of(seed, epoch):
        if epoch == 0:
            return _widths(random_ratios[seed])
        t = EPOCHS.index(epoch) / (len(EPOCHS) - 1)  # position along training, 0.25 .. 1
        return _widths(np.clip(profile + t * drift + noise[(seed, epoch)], 0.05, 1.0))

    return _study(widths_of)


def study_against_supplement():
    """Random structures identical across seeds (= a profile P); pretrained ones go P, B, C, P with B, C
    independent random per seed: claims (1)-(3) all fail."""
    rng = np.random.default_rng(1)
    P = rng.uniform(0.1, 1.0, len(FULL))
    other = {(s, e): rng.uniform(0.1, 1.0, len(FULL)) for s in range(3) for e in (2, 4)}
    return _study(lambda s, e: _widths(P if e in (0, 1, 8) else other[(s, e)]))


def test_correlation_matrix_equals_corrcoef():
    X = np.random.default_rng(3).normal(size=(7, 12))
    np.testing.assert_allclose(correlation_matrix(X), np.corrcoef(X), atol=1e-12)


def test_constant_row_is_nan_except_diagonal():
    X = np.random.default_rng(4).normal(size=(4, 6))
    X[2] = 0.5
    C = correlation_matrix(X)
    assert np.all(np.isnan(np.delete(C[2], 2))) and np.all(np.isnan(np.delete(C[:, 2], 2)))
    assert np.all(np.diag(C) == 1.0)
    rest = [0, 1, 3]
    np.testing.assert_allclose(C[np.ix_(rest, rest)], np.corrcoef(X[rest]), atol=1e-12)
    # non-finite entries make a row undefined too, instead of spreading NaN through the product
    X[0, 1] = np.nan
    C = correlation_matrix(X)
    assert np.isnan(C[0, 1]) and C[0, 0] == 1.0 and np.isfinite(C[1, 3])


def test_structure_matrix_labels_order_and_kinds():
    study = study_as_in_supplement()
    counts, labels = structure_matrix(study)
    assert counts.shape == (15, len(FULL))
    assert labels[:3] == ["s0/random", "s0/e1", "s0/e2"] and labels[5] == "s1/random"
    assert structure_label(2, 8) == "s2/e8"
    ratio, labels2 = structure_matrix(study, seeds=[1], epochs=[4, 0], kind="ratio")
    assert labels2 == ["s1/e4", "s1/random"]
    np.testing.assert_allclose(ratio, counts[[8, 5]] / np.asarray(FULL))
    with pytest.raises(ValueError):
        structure_matrix(study, kind="fraction")
    with pytest.raises(ValueError):
        structure_matrix(study, seeds=[99])


def test_uniform_keep_ratio_is_undefined_for_ratio_but_not_counts():
    study = study_as_in_supplement()
    uniform = next(s for s in study["structures"] if (s["seed"], s["epoch"]) == (0, 0))
    uniform["widths"] = [f // 2 for f in FULL]  # every layer keeps exactly half
    C_counts = correlation_matrix(structure_matrix(study, kind="counts")[0])
    C_ratio = correlation_matrix(structure_matrix(study, kind="ratio")[0])
    assert np.all(np.isfinite(C_counts))
    assert np.all(np.isnan(C_ratio[0, 1:])) and C_ratio[0, 0] == 1.0
    summary = summarize(study, kind="ratio")
    # s0/random takes part in 2 random-random pairs and 4 same-seed random-pretrained pairs
    assert summary["n_nan_pairs_skipped"]["random_vs_random"] == 2
    assert summary["n_pairs"]["random_vs_random"] == 1
    assert summary["n_nan_pairs_skipped"]["random_vs_pretrained_same_seed"] == 4
    assert math.isfinite(summary["random_vs_pretrained_same_seed"])


def test_summary_pair_counts():
    s = summarize(study_as_in_supplement())
    assert s["n_structures"] == 15 and s["kind"] == "counts"
    assert s["n_pairs"] == {"random_vs_random": 3, "pretrained_vs_pretrained_across_seeds": 3 * 16,
                            "random_vs_pretrained_same_seed": 3 * 4, "random_vs_pretrained_all_seeds": 3 * 12,
                            "pretrained_vs_pretrained_same_seed": 3 * 6,
                            "neighbour_checkpoints": 3 * 3, "distant_checkpoints": 3}
    assert all(v == 0 for v in s["n_nan_pairs_skipped"].values())


@pytest.mark.parametrize("kind", ["counts", "ratio"])
def test_claims_hold_on_supplement_like_study(kind):
    s = summarize(study_as_in_supplement(), kind=kind)
    c = claims(s)
    assert set(c) == {"1_random_unlike_pretrained", "1b_random_unlike_every_pretrained", "2_random_more_diverse",
                      "3_near_beats_distant"}
    assert c["1b_random_unlike_every_pretrained"]["rhs"] == s["pretrained_vs_pretrained_same_seed"]
    for entry in c.values():
        assert entry["holds"] is True and entry["evaluated"] is True, entry
        assert isinstance(entry["statement"], str) and entry["statement"]
    assert c["1_random_unlike_pretrained"]["lhs"] == s["random_vs_pretrained_same_seed"]
    assert c["1_random_unlike_pretrained"]["rhs"] == s["neighbour_checkpoints"]
    assert c["2_random_more_diverse"]["lhs"] == s["random_vs_random"]
    assert c["3_near_beats_distant"]["rhs"] == s["distant_checkpoints"]
    assert s["neighbour_checkpoints"] > 0.9


def test_counts_share_the_stage_profile_ratios_do_not():
    # Raw counts of any two structures correlate through the full-width profile (16/32/64 per stage)
    # even when their keep ratios are independent; keep ratios remove that shared part (P7).
    counts = summarize(study_as_in_supplement(), kind="counts")["random_vs_random"]
    ratios = summarize(study_as_in_supplement(), kind="ratio")["random_vs_random"]
    assert counts > 0.4 and abs(ratios) < 0.3


def test_claims_fail_with_numbers_on_contrary_study():
    s = summarize(study_against_supplement())
    c = claims(s)
    assert s["random_vs_random"] == pytest.approx(1.0)
    assert s["distant_checkpoints"] == pytest.approx(1.0)
    for entry in c.values():
        assert entry["holds"] is False and entry["evaluated"] is True, entry
        assert math.isfinite(entry["lhs"]) and math.isfinite(entry["rhs"])
    assert c["1_random_unlike_pretrained"]["lhs"] > c["1_random_unlike_pretrained"]["rhs"]


def test_claims_not_evaluated_without_pairs():
    study = study_as_in_supplement()
    study["seeds"] = [0]
    study["epochs"] = [0, 1, 2]  # one seed, two checkpoints: no cross-seed and no distant pair
    s = summarize(study)
    assert math.isnan(s["random_vs_random"]) and s["n_pairs"]["random_vs_random"] == 0
    assert math.isnan(s["distant_checkpoints"])
    c = claims(s)
    assert c["2_random_more_diverse"] == {**c["2_random_more_diverse"], "holds": False, "evaluated": False}
    assert c["3_near_beats_distant"]["evaluated"] is False
    assert c["1_random_unlike_pretrained"]["evaluated"] is True


def test_duplicate_structure_is_an_error():
    study = study_as_in_supplement()
    study["structures"].append(dict(study["structures"][0]))
    with pytest.raises(ValueError, match="two structures"):
        structure_matrix(study)


def test_claims_per_seed_give_both_vectorisations():
    from prunelab.analysis.structures import claims_per_seed

    rows = claims_per_seed(study_as_in_supplement())
    assert {(r["seed"], r["kind"]) for r in rows} == {(s, k) for s in (0, 1, 2) for k in ("counts", "ratio")}
    assert {r["claim"] for r in rows} == {"1_random_unlike_pretrained", "1b_random_unlike_every_pretrained",
                                           "3_near_beats_distant"}
    assert all(r["holds"] for r in rows if r["kind"] == "ratio")
    contrary = claims_per_seed(study_against_supplement())
    assert not any(r["holds"] for r in contrary if r["claim"].startswith("1"))


def test_density_claims_can_fail():
    from prunelab.analysis.structures import density_claims

    flat = [{"density": d, "acc": 0.70 + 0.001 * i} for d in (0.3, 0.5, 0.7) for i in range(2)]
    c = density_claims(flat)
    assert c[0]["holds"] and c[0]["spread"] < 0.02
    steep = [{"density": d, "acc": a} for d, a in ((0.3, 0.60), (0.5, 0.70), (0.7, 0.71))]
    c = density_claims(steep)
    assert not c[0]["holds"] and c[0]["spread"] == pytest.approx(0.11) and c[1]["holds"] is True


def test_pruning_ratio_claims_can_hold_and_fail():
    from prunelab.analysis.structures import pruning_ratio_claims

    graceful = [{"ratio": r, "acc": a} for r, a in ((0.3, 0.80), (0.3, 0.82), (0.5, 0.79), (0.5, 0.80),
                                                     (0.7, 0.76), (0.7, 0.78))]
    c = pruning_ratio_claims(graceful, full_acc=0.83)
    assert [x["holds"] for x in c] == [True, True]
    assert c[0]["per_ratio"][0.7] == pytest.approx((0.77, np.std([0.76, 0.78], ddof=1), 2))
    collapse = [{"ratio": 0.3, "acc": 0.80}, {"ratio": 0.7, "acc": 0.50}]
    assert [x["holds"] for x in pruning_ratio_claims(collapse, full_acc=0.83)] == [True, False]
    rising = [{"ratio": 0.3, "acc": 0.70}, {"ratio": 0.7, "acc": 0.75}]
    assert pruning_ratio_claims(rising)[0]["holds"] is False and len(pruning_ratio_claims(rising)) == 1
    assert pruning_ratio_claims(rising[:1]) == []
