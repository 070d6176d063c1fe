"""BAR closed forms (docs/decisions.md §4.2, §4.5, §4.6, §6.4) and the active-neuron / Regular-vs-Mixed analysis."""

import math

import numpy as np
import pytest
from scipy import integrate

from prunelab import models
from prunelab.analysis import hard_concrete as hc
from prunelab.analysis.bar import active_neurons, regular_vs_mixed, section_totals
from prunelab.methods.bar import barrier, barrier_onset, budget_bound, transition
from prunelab.counting import count
from prunelab.pruning.structure import Structure


@pytest.fixture(scope="module")
def spec():
    return models.describe(models.create("bar_wrn", k=1))


# -- Hard Concrete -----------------------------------------------------------------------------------


def test_atoms_at_log_alpha_zero():
    # The supplement's "~0.23" is the beta = 1/2 value; with its beta = 2/3 the atoms are 0.1682.
    assert hc.hc_prob_zero(0.0) == pytest.approx(0.1682, abs=5e-5)
    assert hc.hc_prob_one(0.0) == pytest.approx(0.1682, abs=5e-5)
    assert hc.hc_prob_zero(0.0, beta=0.5) == pytest.approx(0.2317, abs=5e-5)
    assert hc.hc_prob_one(0.0, beta=0.5) == pytest.approx(0.2317, abs=5e-5)
    assert hc.hc_prob_nonzero(0.0) == pytest.approx(0.8318, abs=5e-5)


def test_deterministic_gate_and_alive_threshold():
    assert hc.hc_deterministic(0.0) == pytest.approx(0.5)
    thr = hc.hc_alive_threshold()
    assert thr == pytest.approx(-math.log(11)) and round(thr, 4) == -2.3979
    la = np.array([thr - 1e-6, thr + 1e-6, -thr - 1e-6, -thr + 1e-6, -10.0, 10.0])
    zhat = hc.hc_deterministic(la)
    assert list(zhat > 0) == [False, True, True, True, False, True]
    assert zhat[3] == 1.0 and zhat[2] < 1.0  # saturated iff log alpha >= ln 11
    assert list(hc.hc_alive(la)) == list(zhat > 0)


def test_prob_nonzero_is_one_minus_cdf_at_zero():
    la = np.linspace(-6, 6, 25)
    for beta in (0.5, 2 / 3, 1.0):
        np.testing.assert_allclose(hc.hc_prob_nonzero(la, beta), 1 - hc.hc_cdf(0.0, la, beta), rtol=1e-12)
        np.testing.assert_allclose(hc.hc_prob_zero(la, beta), hc.hc_cdf(0.0, la, beta), rtol=1e-12)
        np.testing.assert_allclose(hc.hc_prob_one(la, beta), 1 - hc.hc_cdf(1 - 1e-12, la, beta), atol=1e-9)
    np.testing.assert_allclose(hc.hc_prob_nonzero(la), 1 / (1 + np.exp(-(la + (2 / 3) * math.log(11)))))


def test_monte_carlo_zero_and_one_fractions():
    rng = np.random.default_rng(0)
    z = hc.hc_icdf(rng.uniform(size=200_000), 0.0)
    assert abs(np.mean(z == 0.0) - hc.hc_prob_zero(0.0)) < 0.01
    assert abs(np.mean(z == 1.0) - hc.hc_prob_one(0.0)) < 0.01
    s = hc.hc_sample(np.array([-1.0, 0.0, 2.0]), 50_000, np.random.default_rng(1))
    assert s.shape == (50_000, 3) and s.min() >= 0 and s.max() <= 1
    np.testing.assert_allclose((s != 0).mean(axis=0), hc.hc_prob_nonzero(np.array([-1.0, 0.0, 2.0])), atol=0.01)


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_hc_density_and_atoms_integrate_to_one(log_alpha):
    cont, _ = integrate.quad(hc.hc_pdf, 0, 1, args=(log_alpha,))
    total = cont + hc.hc_prob_zero(log_alpha) + hc.hc_prob_one(log_alpha)
    assert total == pytest.approx(1.0, abs=1e-7)
    # the continuous part accumulates exactly the CDF's rise between the atoms
    part, _ = integrate.quad(hc.hc_pdf, 0, 0.3, args=(log_alpha,))
    assert part == pytest.approx(hc.hc_cdf(0.3, log_alpha) - hc.hc_cdf(0.0, log_alpha), abs=1e-8)


def test_bc_pdf_is_cdf_derivative_and_icdf_inverts_cdf():
    s = np.linspace(0.02, 0.98, 49)
    for la in (-1.0, 0.0, 2.0):
        h = 1e-6
        num = (hc.bc_cdf(s + h, la) - hc.bc_cdf(s - h, la)) / (2 * h)
        np.testing.assert_allclose(hc.bc_pdf(s, la), num, rtol=1e-5)
        np.testing.assert_allclose(hc.bc_cdf(hc.bc_icdf(s, la), la), s, rtol=1e-10)
        np.testing.assert_allclose(hc.bc_icdf(hc.bc_cdf(s, la), la), s, rtol=1e-10)
    # Eq. 2 as printed agrees with the stable form
    la, b = 0.7, 2 / 3
    a = math.exp(la)
    eq2 = b * a * s ** (-b - 1) * (1 - s) ** (-b - 1) / (a * s ** (-b) + (1 - s) ** (-b)) ** 2
    np.testing.assert_allclose(hc.bc_pdf(s, la, b), eq2, rtol=1e-12)
    assert hc.bc_pdf(0.0) == 0.0 and hc.bc_cdf(-1.0) == 0.0 and hc.bc_cdf(2.0) == 1.0
    # the HC sampler is the stretched, clamped BC sampler (Eq. 4)
    u = np.linspace(0, 1, 101)
    np.testing.assert_allclose(hc.hc_icdf(u, 0.3), np.clip(hc.bc_icdf(u, 0.3) * 1.2 - 0.1, 0, 1))


def test_expected_l0_sums_prob_nonzero():
    la = [np.zeros(3), np.full(2, -10.0)]
    assert hc.expected_l0(la) == pytest.approx(3 * 0.8318 + 2 * hc.hc_prob_nonzero(-10.0), abs=2e-4)
    assert hc.expected_l0(np.zeros(5)) == pytest.approx(5 * hc.hc_prob_nonzero(0.0))
    assert hc.expected_l0({"a": np.zeros(2)}) == pytest.approx(2 * hc.hc_prob_nonzero(0.0))


# -- schedule and barrier ----------------------------------------------------------------------------

TABLE_D10 = [0, 0.0114, 0.0413, 0.1140, 0.2658, 0.5, 0.7342, 0.8860, 0.9587, 0.9886, 1]


def test_transition_table_and_limits():
    t = np.linspace(0, 1, 11)
    np.testing.assert_array_equal(np.round(transition(t, 10.0), 4), TABLE_D10)
    for d in (0.1, 2, 10, 50, 500):
        assert transition(0.0, d) == 0.0 and transition(1.0, d) == 1.0
    np.testing.assert_allclose(transition(t, 0.0), t)
    np.testing.assert_allclose(transition(t, 1e-9), t)
    np.testing.assert_allclose(transition(t, 1e-3), t, atol=1e-6)  # continuous across the switch
    assert np.all(np.isfinite(transition(t, 0.0)))
    # the formula of supp Eq. 1 as printed
    d = 10.0
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    delta = sig(-d / 2)
    assert round(delta, 7) == 0.0066929
    np.testing.assert_allclose(transition(t, d), (sig(d * (t - 0.5)) - delta) / (1 - 2 * delta), atol=1e-12)


def test_budget_bound():
    assert budget_bound(0.0, 101.0, 25.0) == 101.0
    assert budget_bound(1.0, 101.0, 25.0) == 25.0
    assert budget_bound(0.5, 101.0, 25.0) == pytest.approx(63.0)


def test_barrier():
    a, b = 90.0, 100.0
    v = np.array([0.0, 50.0, 90.0, 95.0, 99.999999, 100.0, 1e6])
    f = barrier(v, a, b)
    assert np.all(np.isfinite(f))
    assert f[0] == f[1] == f[2] == 0.0
    assert f[3] == pytest.approx(25.0 / (10.0 * 5.0))
    assert 0 < f[4] < 1e10
    assert f[5] == f[6] == 1e10
    assert barrier(101.0, a, b, cap=7.0) == 7.0
    assert np.all(np.diff(barrier(np.linspace(a, b - 1e-3, 50), a, b)) > 0)
    assert barrier_onset(100.0) == pytest.approx(99.99)
    with pytest.raises(ValueError):
        barrier(1.0, 2.0, 2.0)


# -- active neurons, Regular vs Mixed ----------------------------------------------------------------


def test_regular_at_least_mixed_and_equal_with_shared_trunk_masks(spec):
    rng = np.random.default_rng(0)
    s = Structure.random(spec, rng, keep=(0.2, 0.8))
    r = regular_vs_mixed(spec, s)
    assert r["v_regular"] >= r["v_mixed"] and r["flop_regular"] >= r["flop_mixed"]
    assert r["v_regular"] > r["v_mixed"]  # independent random masks make the unions strictly wider
    assert r["v_delta"] == pytest.approx((r["v_mixed"] - r["v_regular"]) / r["v_regular"])
    assert r["flop_mixed"] == count(spec, s).flops

    alive = {n: v for n, v in s.alive.items()}
    for names in spec.trunks().values():  # one mask per trunk: every union equals the delta's own set
        shared = np.sort(rng.choice(spec.tensor(names[0]).channels, 5, replace=False))
        alive.update({n: shared for n in names})
    r = regular_vs_mixed(spec, Structure._make(spec, alive))
    assert r["v_regular"] == r["v_mixed"] and r["flop_regular"] == r["flop_mixed"]
    assert r["v_delta"] == 0.0


@pytest.mark.parametrize("residual", ["mixed", "regular"])
def test_active_neuron_rows_sum_to_volume(spec, residual):
    s = Structure.random(spec, np.random.default_rng(3), keep=(0.1, 0.9))
    df = active_neurons(spec, s, residual=residual)
    assert list(df.columns[:8]) == ["name", "slot", "stage", "block", "channels", "alive", "area", "alive_volume"]
    assert len(df) == 28
    assert df["alive_volume"].sum() == count(spec, s, residual=residual).volume
    assert (df["alive_volume"] == df["alive"] * df["area"]).all()
    sec = section_totals(df)
    assert sec["section"].iloc[0] == "stem" and len(sec) == 13
    assert sec["alive_volume"].sum() == df["alive_volume"].sum()
    assert sec["alive"].sum() == df["alive"].sum()
    full = active_neurons(spec)
    assert full["alive_volume"].sum() == 274_432 and not section_totals(full)["eliminated"].any()


@pytest.mark.parametrize("residual", ["mixed", "regular"])
def test_eliminated_block_is_flagged(spec, residual):
    s = Structure.random(spec, np.random.default_rng(4), keep=(0.3, 0.9))
    s = s.with_alive({"layer2.1.mid": [], "layer3.2.delta": []})
    sec = section_totals(active_neurons(spec, s, residual=residual)).set_index("section")
    assert sec.loc["stage 2 block 1", "eliminated"]
    assert sec.loc["stage 3 block 2", "eliminated"]
    assert sec["eliminated"].sum() == 2


def test_sensitivity_draws_use_the_supplements_interval_widths():
    from prunelab.config import load_config
    from prunelab.experiments.bar_study import SENSITIVITY, SENSITIVITY_WIDTHS, sample_hyperparameters

    assert len(SENSITIVITY) == 7 and set(SENSITIVITY.values()) == set(SENSITIVITY_WIDTHS)
    base = load_config("bar_wrn_bar", "cpu")
    tuned = {"method.lambda": 1e-4, "method.margin": 1e-4, "optim.lr": 1e-3, "optim.weight_decay": 5e-4,
             "method.kd_alpha": 0.9, "method.d": 10.0, "method.kd_temperature": 4.0}
    rng = np.random.default_rng(0)
    draws = [sample_hyperparameters(base, rng) for _ in range(200)]
    for key, width in SENSITIVITY.items():
        v = np.array([d[key] for d in draws])
        assert np.all(np.abs(v - tuned[key]) <= width / 2 + 1e-15), key  # centred on the tuned value
        assert v.max() - v.min() > 0.8 * width, key  # and spread over the interval's width
