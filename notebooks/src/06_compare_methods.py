# %% [markdown]
# # Comparing methods on one counter
#
# Every method with cached results, on one scale of cost: MACs (and, for BAR's network, the activation
# volume V) **recounted by prunelab's counter** from each pruned network's kept widths, so no number
# depends on how a paper or its code counted. Accuracy is the test accuracy where the study measured it
# (the stage is in the table); the drop is against the dense network the run started from.
#
# Read it with care: the studies use different protocols (fine-tuning length, training from scratch,
# dynamic inference), all much shorter than the papers', so the cpu points compare methods *within*
# a panel and a protocol, not against the published numbers. Published points are drawn hollow and
# labelled **published** (ResNet-20/32/56 from ManiDP's Table 4; BAR's WRN from its supplement §6.1);
# Torch-Pruning's pruners appear as external rows when `bench/vs_torch_pruning.py` has cached them.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("PRUNELAB_SCALE", "auto")  # auto | ci | cpu

# %%
import functools
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prunelab import models
from prunelab.analysis.compare import points, published_points
from prunelab.counting import count
from prunelab.experiments import (RESULTS_DIR, load_results, load_results_file, provenance_note, resolve_scale,
                                  results_with_part)
from prunelab.viz import save_figure, scale_label, use_style

use_style()
SCALE = resolve_scale(SCALE, "quickstart")
STUDIES = ("quickstart", "pfs", "manidp", "ddnp", "bar")
results = {}
for name in STUDIES:
    if SCALE == "cpu" and not (RESULTS_DIR / f"{name}_cpu.json").exists():
        print(f"{name}: no cached cpu results (run `prunelab experiment {name} --scale cpu`)")
        continue
    if SCALE == "ci" and name not in ("quickstart", "manidp"):
        continue  # at ci scale two small studies run on the spot: mechanics only
    results[name] = load_results(name, SCALE)
    print(f"{name}: {provenance_note(results[name])}")
# DDNP's equal-budget ranking (DDNP, l1, slimming, PFS, HRank, CHIP) may lie in a results file of its own
if "ddnp" in results and results_with_part(results["ddnp"], "ddnp", SCALE, "rank") is not results["ddnp"]:
    results["ddnp_rank"] = results_with_part(results["ddnp"], "ddnp", SCALE, "rank")
    print(f"ddnp (rank part): {provenance_note(results['ddnp_rank'])}")


@functools.lru_cache(maxsize=None)
def _spec(model, kwargs):
    return models.describe(models.create(model, **dict(kwargs)))


pts = points(results, lambda m, kw: _spec(m, tuple(sorted(kw.items()))))
pub = published_points()
external = RESULTS_DIR / "bench_vs_torch_pruning.json"
ext = load_results_file(external) if external.exists() else None
table = pd.DataFrame([{"method": p["method"], "setting": p["setting"], "model": p["model"], "scale": p["scale"], "n": p["n"],
                       "accuracy (%)": f"{100 * p['accuracy']:.2f}" + (f" ± {100 * p['accuracy_std']:.2f}" if p["n"] > 1 else ""),
                       "drop (points)": round(100 * p["drop"], 2), "MMACs": round(p["macs"] / 1e6, 2),
                       "MACs kept (%)": round(100 * p["macs_keep"], 1),
                       "V-factor": round(p["v_factor"], 2) if "bar_wrn" in p["model"] else None, "measured": p["stage"]}
                      for p in pts])
if ext:
    for r in ext["rows"]:
        # MACs of these rows: prunelab's module-hook counter on each pruned network (the same formula)
        table.loc[len(table)] = {"method": r["method"] + " [bench]", "setting": "50 % MACs", "model": "resnet20",
                                 "scale": ext["scale"], "n": 1, "accuracy (%)": f"{100 * r['finetuned_test_acc']:.2f}",
                                 "drop (points)": round(100 * (ext["dense_test_acc"] - r["finetuned_test_acc"]), 2),
                                 "MMACs": round(r["macs"] / 1e6, 2), "MACs kept (%)": round(100 * r["macs_keep"], 1),
                                 "V-factor": None, "measured": f"fine-tuned {ext['epochs']} epochs"}
else:
    print("no Torch-Pruning rows: run `python bench/vs_torch_pruning.py` (needs `pip install torch-pruning`)")
table

# %% [markdown]
# ## ResNet-20: accuracy against MACs
#
# Each point is a method setting (mean over its seeds or runs, error bar ± std where n > 1).

# %%
def scatter(ax, rows, x, y, xscale=1.0, yscale=100.0):
    for i, (method, g) in enumerate(pd.DataFrame(rows).groupby("method", sort=False)):
        ax.errorbar(g[x] * xscale, g[y] * yscale, yerr=g.get("accuracy_std", 0) * yscale if y == "accuracy" else None,
                    fmt="o", color=f"C{i % 10}", capsize=3, label=f"{method} (n = {', '.join(map(str, g['n']))})")


r20 = [p for p in pts if p["model"] == "resnet20"]
fig, axes = plt.subplots(1, 2, figsize=(15, 4.6))
if r20:
    scatter(axes[0], r20, "macs", "accuracy", xscale=1e-6)
    dense_m = count(_spec("resnet20", ())).macs / 1e6
    axes[0].axvline(dense_m, color="0.6", ls=":", label=f"dense ResNet-20 ({dense_m:.2f} MMACs)")
axes[0].set(xlabel="MACs of the pruned network (M, prunelab's counter)", ylabel="test accuracy (%)",
            title=f"ResNet-20 on CIFAR-10, every cached method\n{scale_label(SCALE)}")
axes[0].legend(fontsize=7)
# accuracy drop against the fraction of MACs kept, with the published ResNet points (grey, numbered: the
# key is the table printed under the figure). Our methods get one hollow marker shape each, drawn above the
# published points, so points at the same cost (DDNP and l1 at 50 %) stay visible side by side
MARKERS = "osD^vP*Xph"
if r20:
    for i, (method, g) in enumerate(pd.DataFrame(r20).groupby("method", sort=False)):
        axes[1].plot(100 * g["macs_keep"], 100 * g["drop"], MARKERS[i % 10], ms=9, mfc="none", mew=1.8,
                     color=f"C{i % 10}", zorder=3, label=f"{method} [{SCALE}]")
pub_r = pd.DataFrame([p for p in pub if p["model"].startswith("resnet")]).reset_index(drop=True)
for j, (depth, g) in enumerate(pub_r.groupby("model")):
    axes[1].plot(100 * g["macs_keep"], 100 * g["drop"], ["s", "^", "D"][j % 3], ms=4, color="0.55", zorder=2,
                 label=f"{depth} [published, ManiDP Table 4; numbers: table below]")
for k, r in pub_r.iterrows():
    axes[1].annotate(str(k + 1), (100 * r["macs_keep"], 100 * r["drop"]), fontsize=6, color="0.35",
                     xytext=((4, 3), (4, -7), (-9, 3), (-9, -7))[k % 4], textcoords="offset points")
axes[1].set(xlabel="MACs kept (% of the dense network)", ylabel="accuracy drop against its dense network (points)",
            title="Accuracy drop against cost: cpu points and published ones\n[cpu scale and published]")
axes[1].legend(fontsize=6, loc="upper right")
fig.tight_layout()
save_figure(fig, "resnet20_accuracy_vs_macs", "06_compare_methods")
plt.show()
pd.DataFrame({"#": range(1, len(pub_r) + 1), "published method": pub_r["method"], "model": pub_r["model"],
              "MACs kept (%)": (100 * pub_r["macs_keep"]).round(1), "drop (points)": (100 * pub_r["drop"]).round(2)})

# %% [markdown]
# ## BAR's network: accuracy against the activation volume
#
# BAR prunes the WRN of BAR's supplement (cpu scale: k = 1) to volume budgets (and, F-trained, to FLOP
# budgets); the iterative baselines (Random, WM, VQ, ID) halve every gated tensor per step. Every method
# the BAR results hold is drawn; the published CIFAR-10 curves of all nine systems (k = 12, the paper's
# schedule) are drawn dashed and hollow.

# %%
bar_pts = [p for p in pts if "bar_wrn" in p["model"]]
fig, ax = plt.subplots(figsize=(8, 4.4))
if bar_pts:
    for i, (method, g) in enumerate(pd.DataFrame(bar_pts).groupby("method", sort=False)):
        ax.plot(g["v_factor"], 100 * g["accuracy"], "o-", color=f"C{i}", label=f"{method} [{SCALE}, k = 1]")
pubb = pd.DataFrame([p for p in pub if p["model"].startswith("bar_wrn")])
for i, (method, g) in enumerate(pubb.groupby("method")):
    g = g.sort_values("v_factor")
    ax.plot(g["v_factor"], 100 * g["accuracy"], "--", marker="o", mfc="none", color=f"C{(i + 2) % 10}", alpha=0.6,
            label=f"{method} [published, k = 12]")
ax.set_xscale("log", base=2)
ax.set(xlabel="V-factor (V₀ / V, log₂ scale)", ylabel="test accuracy (%)",
       title=f"BAR's WRN on CIFAR-10: accuracy against activation volume\n{scale_label(SCALE)} and published")
ax.legend(fontsize=6, ncol=2)
save_figure(fig, "bar_accuracy_vs_volume", "06_compare_methods")
plt.show()
