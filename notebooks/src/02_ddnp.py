# %% [markdown]
# # DDNP — Disentangled Differentiable Network Pruning
#
# Gao, Huang, Zhang, Huang (ECCV 2022). Two small generators learn, against a **frozen** pretrained
# network, *which* channels of every pruned layer matter (the importance generator g_s, a GRU over the
# layer index) and *how many* to keep (the width generator g_k, k_l = σ(k̄_l + 3)). A layer's mask is a
# soft top-k profile over the importance ranking times a Gumbel-noised gate; the objective is
#
# J = CE + λ·|log(R/p)| + ρ·Σ_l log(1 + |ā_l − k_l + ε_l|),
#
# where R is the remaining ratio of the pruned blocks' ops (counted by prunelab's differentiable
# counter), p its target and ā_l the layer's fraction of open (hard) gates. After the search the
# network is extracted (hard top-k of the EMA importance) and fine-tuned. This notebook reproduces the
# supplementary material:
#
# | supplement | here |
# |---|---|
# | Table A1: p per model | the presets `method.preset` accepts (published) |
# | Tables A2, A3: g_s and g_k | the generators prunelab builds for this model, with their parameter counts |
# | Fig. A1 (a, b): test accuracy and normalised resource loss over the search, several λ | the same, 3 seeds, shaded ± std (n = 3); the resource loss both as \|log(R/p)\| and as R/p (D11) |
# | Fig. A1 (c): accuracy against ρ | ρ = 0, 1, 5: extracted network, and after fine-tuning for ρ = 0 and 1 |
# | Fig. A1 (d): Fix S, Fix k, Channel-wise-ks | search curves, and accuracy before/after fine-tuning |
# | Fig. A1 (e): learnable vs fixed inputs | search curves and final accuracies |
# | Table A4: ResNet-50 on ImageNet at 62 % FLOPs pruned | the published table (ImageNet is not available offline) |
# | generator overhead (0.136 → 0.143 s/iteration) | `bench/method_overhead.py` (a speed target, not a figure) |
# | — | per-layer widths of the searched networks, an equal-budget comparison with l1 and PFS, the claims |
#
# **Scale.** `cpu`: ResNet-20 from the 30-epoch checkpoint (`prunelab train resnet20 --set train.epochs=30`),
# p = 0.5, searches of 40 epochs on 2,500 training images with the backbone frozen (generator learning
# rate 3e-3), 2 fine-tuning epochs where a panel needs accuracy after fine-tuning, 3 seeds for every
# setting and for the comparison, 1 for the output functions.
# The paper: ResNet-56, p = 0.48, 200 search and 205 fine-tuning epochs. Cached results come from
# `prunelab experiment ddnp --scale cpu`; `ci` computes a tiny version on the spot (mechanics only: its
# numbers mean nothing).

# %% tags=["parameters"]
import os

SCALE = os.environ.get("PRUNELAB_SCALE", "auto")  # auto | ci | cpu

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prunelab import methods, models
from prunelab.analysis import ddnp as ad
from prunelab.experiments import load_results, provenance_note, resolve_scale, results_with_part
from prunelab.viz import ddnp as vd
from prunelab.viz import save_figure, scale_label, use_style

use_style()
SCALE = resolve_scale(SCALE, "ddnp")
S = load_results("ddnp", SCALE)
print(provenance_note(S))

# %%
spec = models.describe(models.create(S["model"]))
P = S["p"]
CTX = f"{S['model'].replace('resnet', 'ResNet-')} on CIFAR-10, p = {P}"  # named in every title
print(f"running at {SCALE} scale: {S['model']}, {len(S['layers'])} pruned layers (block middles), p = {P}, dense "
      f"checkpoint {100 * S['dense']['test_acc']:.2f}% after {S['dense']['epochs']} epochs; {len(S['runs'])} searches")


def pct(s):
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" if s["n"] > 1 else (f"{100 * s['mean']:.2f}" if s["n"] else "—")


rows = []
for r in ad.settings_table(S, spec):
    rows.append({"setting": r["setting"], "n": r["n"], "R (recounted)": f"{r['R']['mean']:.3f} ± {r['R']['std']:.3f}",
                 "MACs / dense": f"{r['macs_ratio']['mean']:.3f}", "masked (%)": pct(r["masked_test_acc"]),
                 "extracted (%)": pct(r["extracted_test_acc"]), "fine-tuned (%)": pct(r["finetuned_test_acc"])})
print("test accuracy at every stage boundary, mean ± std over seeds (dense checkpoint "
      f"{100 * S['dense']['test_acc']:.2f}%)")
pd.DataFrame(rows)

# %% [markdown]
# ## Tables A1–A3: the target p, and the generators
#
# Table A1 is shipped as `prunelab/published/ddnp_table_a1.csv`; each row is a preset
# (`method: {name: ddnp, preset: cifar10-resnet56}`). The generators below are the ones the method
# builds for this notebook's model (supplement Tables A2 and A3; D1).

# %%
a1 = ad.published_table("ddnp_table_a1")
display(a1[["preset", "dataset", "model", "p", "flops_pruned"]].style.set_caption("Table A1 [published]"))
m = methods.create("ddnp")
gated = m.attach(models.create(S["model"]))
ctrl = gated.controller
gen = pd.DataFrame([
    {"generator": "g_s (importance, Table A2)", "structure": f"x_s {tuple(ctrl.importance.inputs.shape)} → GRU(64→128) "
     f"+ WeightNorm → ReLU → FC_l(128→C_l) + WeightNorm, l = 1..{len(ctrl.names)}",
     "parameters": sum(p.numel() for p in ctrl.importance.parameters())},
    {"generator": "g_k (width, Table A3)", "structure": f"x_k {tuple(ctrl.width.inputs.shape)} → FC(32→64) + WeightNorm "
     f"→ ReLU → FC(64→{len(ctrl.names)}) + WeightNorm → σ(· + 3)",
     "parameters": sum(p.numel() for p in ctrl.width.parameters())}])
display(gen)
print(f"starting widths k = σ(k̄ + 3): mean {float(ctrl.k().detach().mean()):.3f} (σ(3) = 0.953: the whole network)")

# %% [markdown]
# ## Fig. A1 (a, b) — the search for several λ
#
# Test accuracy of the eval-mode masked network (2,500 test images at cpu scale, every other epoch) and
# the normalised resource loss, drawn both ways (D11): |log(R/p)| of the eval widths (what λ weighs) and
# R/p (above 1: the network is still larger than the target). λ is the package's λ (the official code's
# `reg_w` is λ/2, D5).

# %%
lam_settings = ad.sweep_settings(S, "lambda", full_value=4.0)  # the full method runs at λ = 4
resource = {lam: ad.resource_curves(ad.runs_of(S, n)) for lam, n in lam_settings}
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
vd.plot_search_curves({f"λ = {lam:g}": ad.curve(ad.runs_of(S, n), "test_acc") for lam, n in lam_settings}, ax=axes[0],
                      ylabel="test accuracy (%)", title=f"(a) masked network during the search ({CTX})", scale=SCALE, percent=True)
vd.plot_search_curves({f"λ = {lam:g}": resource[lam]["|log(R_hard/p)|"] for lam, _ in lam_settings},
                      ax=axes[1], ylabel="|log(R/p)| (eval widths)", title=f"(b) normalised resource loss ({CTX})", scale=SCALE)
vd.plot_search_curves({f"λ = {lam:g}": resource[lam]["R_hard/p"] for lam, _ in lam_settings},
                      ax=axes[2], ylabel="R / p (eval widths)", title=f"(b') the same as a ratio ({CTX})", scale=SCALE,
                      target=1.0, target_label="R = p")
fig.tight_layout()
save_figure(fig, "fig_a1_ab_lambda", "02_ddnp")
plt.show()
pd.DataFrame([{"λ": lam, "final R (mean)": round(ad.spread([r["R_hard"] for r in ad.runs_of(S, n)])["mean"], 4),
               "p": P, "extracted acc (%)": pct(ad.spread([r["extracted_test_acc"] for r in ad.runs_of(S, n)]))}
              for lam, n in lam_settings])

# %% [markdown]
# ## Fig. A1 (c) — accuracy against ρ
#
# ρ = 0 disentangles width and importance completely; a large ρ ties the width to the gate count.
# Each dot is a seed; the error bars are mean ± std. Fine-tuned where the study fine-tunes (ρ = 0 and 1).
# The right panel plots each run's accuracy against the budget it *realised* (R recounted from the extracted
# widths): a setting whose networks land far from p is not compared at the same budget, and the claim below
# (`rho = 0 gives a lower test accuracy ... both at the budget p`) holds only when both settings land at p.

# %%
rho_settings = ad.sweep_settings(S, "rho", full_value=1.0)  # the full method runs at ρ = 1
points = {"extracted, before fine-tuning": {rho: [r["extracted_test_acc"] for r in ad.runs_of(S, n)] for rho, n in rho_settings},
          "after fine-tuning": {rho: [r["finetuned_test_acc"] for r in ad.runs_of(S, n)] for rho, n in rho_settings
                                if any(r["finetuned_test_acc"] is not None for r in ad.runs_of(S, n))}}
fig, axes = plt.subplots(1, 3, figsize=(18, 4.2))
vd.plot_accuracy_vs(points, ax=axes[0], xlabel="ρ (alignment weight)", title=f"(c) test accuracy against ρ ({CTX})", scale=SCALE,
                    logx=True)
vd.plot_search_curves({f"ρ = {rho:g}": ad.resource_curves(ad.runs_of(S, n))["R_hard/p"] for rho, n in rho_settings},
                      ax=axes[1], ylabel="R / p (eval widths)", title=f"R/p during the search, by ρ ({CTX})", scale=SCALE,
                      target=1.0, target_label="R = p")
for i, (rho, n) in enumerate(rho_settings):
    runs = ad.runs_of(S, n)
    rs = [ad.recount(S, r, spec)["R"] for r in runs]
    for key, mk, what in (("extracted_test_acc", "o", "extracted"), ("finetuned_test_acc", "s", "fine-tuned")):
        acc = [r[key] for r in runs]
        if any(a is not None for a in acc):
            axes[2].plot([x for x, a in zip(rs, acc) if a is not None], [100 * a for a in acc if a is not None], mk,
                         color=f"C{i}", mfc="none" if what == "extracted" else f"C{i}", label=f"ρ = {rho:g}, {what} (n = {len(runs)})")
axes[2].axvline(P, color="0.5", ls=":", label=f"p = {P}")
axes[2].set(xlabel="realised R (remaining block-op ratio, recounted from the extracted widths)", ylabel="test accuracy (%)",
            xlim=(0, 1), ylim=(0, 100))
axes[2].legend(fontsize=7)
vd.title_with_scale(axes[2], f"(c') accuracy against the realised budget ({CTX})", SCALE)
fig.tight_layout()
save_figure(fig, "fig_a1_c_rho", "02_ddnp")
plt.show()

# %% [markdown]
# ## Fig. A1 (d) — Fix S, Fix k and Channel-wise-ks against the full method
#
# Fix S: importance fixed to the L1 norm of each channel's conv1 filter (data-free, D9), only the
# resource and alignment terms train k. Fix k: every k_l = 0.5, only g_s trains. Channel-wise-ks: one
# free logit per channel and one per layer instead of the generators, trained as the official code trains
# them (the two-term objective, the per-layer scalars at 10× the learning rate; D13: with the alignment term
# the scalars never pruned at all). The control "generators, two-term" trains the full method's generators
# with that same two-term objective: Channel-wise-ks against it changes the parameterisation only, against
# the full method it changes both (shown once the study has run it).

# %%
variants = [("full", "DDNP (full)"), ("full_two_term", "generators, two-term (control)"), ("fix_s", "Fix S"),
            ("fix_k", "Fix k"), ("channelwise", "Channel-wise-ks")]
variants = [(n, label) for n, label in variants if ad.runs_of(S, n)]
fig, axes = plt.subplots(1, 2, figsize=(14, 4.4))
vd.plot_search_curves({label: ad.curve(ad.runs_of(S, n), "test_acc") for n, label in variants}, ax=axes[0],
                      ylabel="test accuracy (%)", title=f"(d) masked network during the search ({CTX})", scale=SCALE, percent=True)
vd.plot_final_accuracy({label: {"extracted": [r["extracted_test_acc"] for r in ad.runs_of(S, n)],
                                "fine-tuned": [r["finetuned_test_acc"] for r in ad.runs_of(S, n)]}
                        for n, label in variants}, ax=axes[1], title=f"(d) final test accuracy ({CTX})", scale=SCALE)
fig.tight_layout()
save_figure(fig, "fig_a1_d_variants", "02_ddnp")
plt.show()

# %% [markdown]
# ## Fig. A1 (e) — learnable against fixed generator inputs

# %%
inputs = [(n, label) for n, label in (("full", "fixed inputs"), ("learnable_input", "learnable inputs")) if ad.runs_of(S, n)]
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
vd.plot_search_curves({label: ad.curve(ad.runs_of(S, n), "test_acc") for n, label in inputs}, ax=axes[0],
                      ylabel="test accuracy (%)", title=f"(e) masked network during the search ({CTX})", scale=SCALE, percent=True)
vd.plot_final_accuracy({label: {"extracted": [r["extracted_test_acc"] for r in ad.runs_of(S, n)]} for n, label in inputs},
                       ax=axes[1], title=f"(e) extracted network's test accuracy ({CTX})", scale=SCALE)
fig.tight_layout()
save_figure(fig, "fig_a1_e_inputs", "02_ddnp")
plt.show()

# %% [markdown]
# ## Output functions σ, |s̄| and s̄² (main paper Fig. 4; recorded, no claim)
#
# Only the ranking changes (the gate stays σ((s̄ + g + 3)/τ), as in the official code). Ranking by |s̄| or
# s̄² puts channels with strongly *negative* logits, whose gates the generator closes, at the top of the
# ranking, so the extracted network can keep exactly the channels the search switched off: read the
# extracted accuracy with that in mind (the official code multiplies these scores by the feature-norm
# prior, `importance_prior: feature_norm`, which the σ default does not need).

# %%
outs = [("full", "σ (sigmoid)"), ("score=abs", "|s̄|"), ("score=square", "s̄²")]
pd.DataFrame([{"output function": label, "n": len(ad.runs_of(S, n)),
               "final R": round(ad.spread([r["R_hard"] for r in ad.runs_of(S, n)])["mean"], 4),
               "extracted acc (%)": pct(ad.spread([r["extracted_test_acc"] for r in ad.runs_of(S, n)]))}
              for n, label in outs if ad.runs_of(S, n)])

# %% [markdown]
# ## The searched architectures
#
# Channels kept per block middle by the full method (mean over seeds) and by the variants, against the
# full network. DDNP prunes only the block middles (conv1 outputs), so the residual trunk keeps its width.

# %%
widths = {label: np.mean([r["widths"] for r in ad.runs_of(S, n)], 0) for n, label in variants}
fig, ax = plt.subplots(figsize=(10, 3.8))
vd.plot_widths(S["layers"], S["channels"], {f"{k} (mean of {len(ad.runs_of(S, n))})": v
                                            for (n, _), (k, v) in zip(variants, widths.items())}, ax=ax,
               title=f"Per-layer widths of the searched networks ({CTX})", scale=SCALE)
save_figure(fig, "widths", "02_ddnp")
plt.show()

# %% [markdown]
# ## Table A4 — ResNet-50 on ImageNet, about 62 % of FLOPs pruned [published]

# %%
a4 = ad.published_table("ddnp_table_a4")
display(a4.drop(columns=["source"]).style.set_caption("Table A4 [published; ImageNet, not reproduced offline]"))

# %% [markdown]
# ## Equal budget: DDNP against l1 and PFS
#
# From the same 30-epoch checkpoint and with the same fine-tuning schedule: DDNP's full method at
# p = 0.5 (its R counts the pruned blocks' ops), `l1` at 50 % of the whole model's MACs (global ranking
# of conv1-filter magnitudes) and PFS with its gates learned on the pretrained weights (frozen, one epoch
# on 45k images) at 50 % MACs. The MACs are recounted from each structure; all three prune only the block
# middles. Accuracies are mean ± std over the seeds (n in the table; DDNP and PFS: search seeds; l1: fine-tuning
# seeds).

# %%
cmp_rows = ad.compare_table(S, spec)
pd.DataFrame([{"method": r["method"], "n": r["n"], "MMACs": round(r["macs"]["mean"] / 1e6, 2),
               "MACs / dense": round(r["macs_ratio"]["mean"], 3), "R (DDNP's convention)": round(r["R"]["mean"], 3),
               "before fine-tuning (%)": pct(r["before_finetune"]), "after fine-tuning (%)": pct(r["finetuned"])}
              for r in cmp_rows])

# %% [markdown]
# ## Equal budget with a fine-tune long enough to rank
#
# The comparison above fine-tunes for 2 epochs, too short to rank: the methods end within each other's seed
# spread. The study's `rank` part runs six methods from the same checkpoint at 50 % MACs: DDNP, `l1`, network
# slimming, PFS, HRank and CHIP. Each gets three seeds and the same longer fine-tune (8 epochs at cpu). Left:
# the mean test accuracy after every fine-tuning epoch. Right: the gap DDNP − `l1`, paired by seed (the
# same fine-tuning seed), mean ± std. A ranking is stable when the gap keeps its sign over the last epochs.
# The claim `ddnp_vs_l1_equal_budget` below also needs a paired t-test with p < 0.05.

# %%
# the rank part may have been run on its own (--parts dense,rank) after the rest was committed: its results
# then lie in the .partial.json beside the study's file, from the same settings and their own dense run
R = results_with_part(S, "ddnp", SCALE, "rank")
if R is not S:
    print("the ranking comparison is read from its own results file:", provenance_note(R))
eb = ad.equal_budget(R, spec)
if not eb:
    print("the ranking comparison (the study's `rank` part) is not in these results yet; run it with "
          f"`prunelab experiment ddnp --scale {SCALE} --parts dense,rank` (then `--collect`)")
else:
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    for i, r in enumerate(eb["table"]):
        if r["curve"]:
            axes[0].plot(range(1, len(r["curve"]) + 1), [100 * v for v in r["curve"]], "o-", color=f"C{i}",
                         label=f"{r['label']} (mean of n = {r['n']}; {r['structures']} structure(s))")
    axes[0].set(xlabel="fine-tuning epoch", ylabel="test accuracy (%)")
    axes[0].legend(fontsize=7)
    vd.title_with_scale(axes[0], f"Equal budget (50 % MACs): test accuracy while fine-tuning ({CTX})", SCALE)
    if eb.get("gap_curve_mean"):
        m, sd = np.array(eb["gap_curve_mean"]) * 100, np.array(eb["gap_curve_std"]) * 100
        ep = np.arange(1, len(m) + 1)
        axes[1].plot(ep, m, "o-", color="C0", label=f"DDNP − l1, mean ± std over paired seeds (n = {len(eb['seeds'])})")
        axes[1].fill_between(ep, m - sd, m + sd, color="C0", alpha=0.2)
        axes[1].axhline(0, color="0.5", ls=":")
        axes[1].legend(fontsize=7)
    axes[1].set(xlabel="fine-tuning epoch", ylabel="accuracy gap (points)")
    vd.title_with_scale(axes[1], f"DDNP − l1 against fine-tuning epochs ({CTX})", SCALE)
    fig.tight_layout()
    save_figure(fig, "equal_budget_rank", "02_ddnp")
    plt.show()
    print(f"paired t-test on the final accuracies (DDNP vs l1, n = {len(eb.get('seeds', []))} seed pairs): "
          f"p = {eb.get('p_paired_t', float('nan')):.3g}")
    display(pd.DataFrame([{"method": r["label"], "n": r["n"], "structures": r["structures"],
                           "MACs / dense": round(r["macs_ratio"]["mean"], 3), "before fine-tuning (%)": pct(r["before_finetune"]),
                           "after fine-tuning (%)": pct(r["finetuned"])} for r in eb["table"]]))

# %% [markdown]
# ## The claims, recomputed from the runs
#
# `holds` is what the numbers say at this scale. The same checks run in `tests/test_claims.py` on the
# committed cpu results, where a claim that fails is an expected failure carrying its numbers.

# %%
def _numbers(c: dict) -> str:
    def fmt(v):
        if isinstance(v, dict) and "mean" in v:
            return f"{v['mean']:.4f} ± {v['std']:.4f} (n={v['n']})" if v["n"] > 1 else f"{v['mean']:.4f} (n={v['n']})"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return "; ".join(f"{k} = {fmt(v)}" for k, v in c.items() if k not in ("claim", "holds"))


table = pd.DataFrame([{"claim": c["claim"], "holds": c["holds"], "numbers": _numbers(c)} for c in ad.claims(S, spec)
                      + ([ad.equal_budget_claim(R, spec)] if R is not S and eb.get("seeds") else [])])
with pd.option_context("display.max_colwidth", 400):
    display(table.style.set_properties(**{"text-align": "left", "white-space": "pre-wrap"}).hide(axis="index"))

# %% [markdown]
# **Reading the cpu-scale run** (the committed results; at `ci` scale the numbers mean nothing).
# Without the alignment term (ρ = 0) the *soft* R still meets p while the hard, extracted widths
# collapse far below it: the alignment term is what makes the extracted widths match the soft ones. Fix S
# and Fix k are far worse than the full method before fine-tuning; after the short fine-tuning Fix k
# stays behind, while Fix S closes the gap to within the seed spread, so that claim is marked as a tie
# (an expected failure in the tests, with its numbers). With n = 3 seeds every spread is a rough one.
# In the equal-budget table, DDNP lands level with `l1` after 2 fine-tuning epochs and ahead of PFS; the
# paper's comparison uses 205 fine-tuning epochs, which this protocol does not attempt.

# %% [markdown]
# ## Explore the sweeps and compare architectures
#
# Pick λ or ρ, a value and a seed: the search curves and the widths that run ends with. Below, any two
# searched networks side by side.

# %%
from prunelab.viz.widgets import ArchitectureCompare, DDNPSweepExplorer

sweep = DDNPSweepExplorer(S)
sweep.seed.value = sweep.seed.options[-1]
assert "final R" in sweep.label.value or "not run" in sweep.label.value
display(sweep.widget)

# %%
compare = ArchitectureCompare(S, "full", next((k for k in S["runs"] if k.startswith("fix_k/")), None))
assert "MACs" in compare.label.value
display(compare.widget)
