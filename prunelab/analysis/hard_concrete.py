"""Binary Concrete and Hard Concrete distributions in closed form (BAR supp 003 §9; docs/decisions.md §4.2).

Every function is numpy-vectorised: arguments may be floats or arrays and broadcast together.
Parameters follow the supplement: ``log_alpha`` = log α (the learned location), ``beta`` = β (the
temperature), and the Hard Concrete stretches the Binary Concrete from (0, 1) to (``gamma``,
``zeta``) = (γ, ζ) before clamping to [0, 1]. The defaults β, γ, ζ = 2/3, −0.1, 1.1 are those the
supplement uses "for all our experiments" (after Louizos et al., 2018).

Conventions (supp Eqs. 2–5):

* Binary Concrete (BC) on s ∈ (0, 1):
  q_BC(s) = βα s^(−β−1) (1−s)^(−β−1) / (α s^(−β) + (1−s)^(−β))²,
  Q_BC(s) = Sigmoid(β (log s − log(1−s)) − log α),
  Q_BC⁻¹(u) = Sigmoid((log u − log(1−u) + log α) / β).
* Hard Concrete (HC): z = Clamp₀,₁(s (ζ−γ) + γ). The BC mass that lands on [γ, 0] becomes the atom
  P(z = 0); the mass on [1, ζ] becomes the atom P(z = 1).

Identities used by the tests (docs/decisions.md §4.2):

* P(z ≠ 0) = 1 − Q_HC(0) = Sigmoid(log α − β log(−γ/ζ))  (Eq. 5, the expected-L0 summand);
* P(z = 0) = Sigmoid(β log(−γ/ζ) − log α);  P(z = 1) = Sigmoid(log α − β log((1−γ)/(ζ−1)));
* the test-time gate ẑ = Clamp₀,₁(Sigmoid(log α)(ζ−γ) + γ) is > 0 iff log α > log(−γ/ζ) = −ln 11.

**Discrepancy with the supplement.** §9.1 says that at log α = 0, P(z = 0) = P(z = 1) ≈ 0.23. With
the β = 2/3 it states, the value is Sigmoid(−(2/3) ln 11) = **0.1682**; 0.2317 is the value for
β = 1/2. prunelab keeps β = 2/3 and its tests check 0.1682.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1

__all__ = [
    "BETA", "GAMMA", "ZETA",
    "bc_pdf", "bc_cdf", "bc_icdf",
    "hc_pdf", "hc_cdf", "hc_icdf", "hc_prob_zero", "hc_prob_one", "hc_prob_nonzero",
    "hc_deterministic", "hc_alive_threshold", "hc_alive", "expected_l0", "hc_sample",
]


def _check_stretch(gamma, zeta) -> None:
    # The atoms only exist for a proper stretch; gamma >= 0 or zeta <= 1 would make log(-gamma/zeta)
    # or log((1-gamma)/(zeta-1)) undefined and silently return NaN.
    if np.any(np.asarray(gamma) >= 0) or np.any(np.asarray(zeta) <= 1):
        raise ValueError(f"Hard Concrete needs gamma < 0 < 1 < zeta, got gamma={gamma}, zeta={zeta}")


def _scalar_or_array(x):
    x = np.asarray(x, dtype=float)
    return x[()] if x.ndim == 0 else x


# -- Binary Concrete -------------------------------------------------------------------------------


def bc_pdf(s, log_alpha=0.0, beta=BETA):
    """Binary Concrete density q_BC(s | α, β) (supp Eq. 2); 0 outside the open interval (0, 1).

    Computed as β·Sigmoid(x)·(1 − Sigmoid(x)) / (s(1 − s)) with x = β·logit(s) − log α, which is
    Eq. 2 rewritten so that large |log α| does not overflow α = exp(log α). For β < 1 the density
    diverges at s → 0 and s → 1; the endpoints themselves are returned as 0.
    """
    s = np.asarray(s, dtype=float)
    inside = (s > 0) & (s < 1)
    s_in = np.where(inside, s, 0.5)  # placeholder keeps logit finite where the result is masked anyway
    x = beta * logit(s_in) - np.asarray(log_alpha, dtype=float)
    sig = expit(x)
    dens = beta * sig * (1.0 - sig) / (s_in * (1.0 - s_in))
    return _scalar_or_array(np.where(inside, dens, 0.0))


def bc_cdf(s, log_alpha=0.0, beta=BETA):
    """Binary Concrete CDF Q_BC(s | α, β) = Sigmoid(β(log s − log(1−s)) − log α) (supp Eq. 3).

    0 for s ≤ 0 and 1 for s ≥ 1.
    """
    s = np.asarray(s, dtype=float)
    with np.errstate(divide="ignore"):  # logit(0) = -inf and logit(1) = +inf are the right limits
        x = beta * logit(np.clip(s, 0.0, 1.0)) - np.asarray(log_alpha, dtype=float)
    return _scalar_or_array(expit(x))


def bc_icdf(u, log_alpha=0.0, beta=BETA):
    """Inverse Binary Concrete CDF: Sigmoid((log u − log(1−u) + log α)/β), u ∈ [0, 1].

    This is the BC sampler: s = bc_icdf(U) with U ~ Uniform(0, 1). u = 0 and u = 1 map to 0 and 1.
    """
    u = np.asarray(u, dtype=float)
    if np.any((u < 0) | (u > 1)):
        raise ValueError("u must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        x = (logit(u) + np.asarray(log_alpha, dtype=float)) / beta
    return _scalar_or_array(expit(x))


# -- Hard Concrete ---------------------------------------------------------------------------------


def hc_pdf(z, log_alpha=0.0, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """Continuous part of the Hard Concrete density on the open interval (0, 1).

    Stretching s ↦ s(ζ−γ) + γ gives the density q_BC((z−γ)/(ζ−γ)) / (ζ−γ). It integrates over (0, 1)
    to 1 − P(z=0) − P(z=1); the remaining mass sits in the two atoms (:func:`hc_prob_zero`,
    :func:`hc_prob_one`). Returns 0 outside (0, 1), including at the atoms themselves.
    """
    _check_stretch(gamma, zeta)
    z = np.asarray(z, dtype=float)
    width = np.asarray(zeta, dtype=float) - np.asarray(gamma, dtype=float)
    dens = bc_pdf((z - gamma) / width, log_alpha, beta) / width
    return _scalar_or_array(np.where((z > 0) & (z < 1), dens, 0.0))


def hc_cdf(z, log_alpha=0.0, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """Hard Concrete CDF Q_HC(z) = P(Z ≤ z), atoms included.

    0 for z < 0; jumps to P(z=0) at z = 0; equals Q_BC((z−γ)/(ζ−γ)) on [0, 1); jumps to 1 at z = 1.
    """
    _check_stretch(gamma, zeta)
    z = np.asarray(z, dtype=float)
    width = np.asarray(zeta, dtype=float) - np.asarray(gamma, dtype=float)
    inner = bc_cdf((z - gamma) / width, log_alpha, beta)
    out = np.where(z < 0, 0.0, np.where(z >= 1, 1.0, inner))
    return _scalar_or_array(out)


def hc_icdf(u, log_alpha=0.0, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """Hard Concrete inverse CDF (supp Eq. 4): Clamp₀,₁[Sigmoid((logit u + log α)/β)(ζ−γ) + γ].

    With U ~ Uniform(0, 1) this returns exact zeros with probability :func:`hc_prob_zero` and exact
    ones with probability :func:`hc_prob_one`.
    """
    _check_stretch(gamma, zeta)
    s = bc_icdf(u, log_alpha, beta)
    return _scalar_or_array(np.clip(np.asarray(s) * (zeta - gamma) + gamma, 0.0, 1.0))


def hc_prob_zero(log_alpha=0.0, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """P(z = 0) = Q_BC(−γ/(ζ−γ)) = Sigmoid(β log(−γ/ζ) − log α).

    At log α = 0 and β = 2/3 this is 0.1682 (the supplement's "≈ 0.23" is the β = 1/2 value, 0.2317;
    see the module docstring).
    """
    _check_stretch(gamma, zeta)
    return _scalar_or_array(expit(beta * np.log(-np.asarray(gamma) / zeta) - np.asarray(log_alpha, dtype=float)))


def hc_prob_one(log_alpha=0.0, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """P(z = 1) = 1 − Q_BC((1−γ)/(ζ−γ)) = Sigmoid(log α − β log((1−γ)/(ζ−1))).

    Equal to :func:`hc_prob_zero` at log α = 0 whenever γ + ζ = 1 (the defaults): 0.1682 for β = 2/3.
    """
    _check_stretch(gamma, zeta)
    shift = beta * np.log((1 - np.asarray(gamma)) / (zeta - 1))
    return _scalar_or_array(expit(np.asarray(log_alpha, dtype=float) - shift))


def hc_prob_nonzero(log_alpha=0.0, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """P(z ≠ 0) = 1 − Q_HC(0) = Sigmoid(log α − β log(−γ/ζ)) (supp Eq. 5, one term of L_HC)."""
    _check_stretch(gamma, zeta)
    return _scalar_or_array(expit(np.asarray(log_alpha, dtype=float) - beta * np.log(-np.asarray(gamma) / zeta)))


def hc_deterministic(log_alpha=0.0, *, gamma=GAMMA, zeta=ZETA):
    """Test-time gate ẑ = Clamp₀,₁(Sigmoid(log α)(ζ − γ) + γ) (Louizos's estimator; docs/decisions.md §4.2).

    This is what V, evaluation and hard pruning read: a gate is alive iff ẑ > 0 (not E[z] > 0, which
    holds for every finite log α). ẑ = 0.5 at log α = 0 for the defaults. β does not enter, so γ and ζ
    are keyword-only: a positional call in the (log α, β, γ, ζ) order of the other functions fails loudly.
    """
    _check_stretch(gamma, zeta)
    return _scalar_or_array(np.clip(expit(np.asarray(log_alpha, dtype=float)) * (zeta - gamma) + gamma, 0.0, 1.0))


def hc_alive_threshold(*, gamma=GAMMA, zeta=ZETA) -> float:
    """log α above which ẑ > 0: log(−γ/ζ) (= −ln 11 ≈ −2.3979 for the defaults)."""
    _check_stretch(gamma, zeta)
    return float(np.log(-gamma / zeta))


def hc_alive(log_alpha, *, gamma=GAMMA, zeta=ZETA):
    """Boolean alive test ẑ > 0, i.e. log α > log(−γ/ζ) (docs/decisions.md §4.2, §4.9)."""
    return np.asarray(hc_deterministic(log_alpha, gamma=gamma, zeta=zeta)) > 0


def expected_l0(log_alphas, beta=BETA, gamma=GAMMA, zeta=ZETA) -> float:
    """Expected number of non-zero gates Σ P(z ≠ 0): the sparsity loss L_HC of supp Eq. 5 (unweighted).

    ``log_alphas`` is an array, or a list/tuple/dict of arrays (one per gated tensor, widths may
    differ); every gate counts once, whatever tensor it belongs to (B4's default).
    """
    if isinstance(log_alphas, dict):
        log_alphas = list(log_alphas.values())
    if isinstance(log_alphas, (list, tuple)):
        return float(sum(np.sum(hc_prob_nonzero(np.asarray(a, dtype=float), beta, gamma, zeta)) for a in log_alphas))
    return float(np.sum(hc_prob_nonzero(np.asarray(log_alphas, dtype=float), beta, gamma, zeta)))


def hc_sample(log_alpha, n: int, rng=None, beta=BETA, gamma=GAMMA, zeta=ZETA, eps: float = 1e-6):
    """``n`` Hard Concrete draws per gate: hc_icdf(U) with U ~ Uniform(0, 1) clipped to [eps, 1 − eps].

    Returns an array of shape ``(n,) + shape(log_alpha)``. The clip mirrors the training sampler
    (docs/decisions.md §4.2); it leaves the atoms intact because Q_BC⁻¹(1e-6) is far below −γ/(ζ−γ) for
    any moderate log α. ``rng`` is a :class:`numpy.random.Generator` (a fresh default one if None).
    """
    rng = np.random.default_rng() if rng is None else rng
    log_alpha = np.asarray(log_alpha, dtype=float)
    u = np.clip(rng.uniform(size=(int(n),) + log_alpha.shape), eps, 1.0 - eps)
    return np.asarray(hc_icdf(u, log_alpha, beta, gamma, zeta))
