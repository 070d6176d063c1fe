# %% [markdown]
# # Structure explorer — every pruned network prunelab knows about
#
# One place to look at pruned structures: the networks in the committed cached results of every study
# (l1, BAR, PFS, ManiDP, DDNP at `cpu` scale) and the pruning runs in any run folder you point it at
# (`RUNS` below: `prunelab prune ...` writes them under `runs/`).
#
# Pick a network (and a second one to compare), then a view:
#
# * **widths** — channels kept per gated tensor against the full network;
# * **MACs share / V share** — where the cost sits: each layer's share of the MACs (the conv producing
#   the tensor) or of the activation volume V, counted by prunelab's one counter;
# * **per instance** — for a dynamic network (ManiDP), the kept channels of one test image, chosen by
#   its place in the cost ranking.
#
# The label gives each network's accuracy (and at which stage it was measured) and cost, and the Pearson
# correlation of the two structures' keep ratios. **export plan** writes the first network's structure
# as a plan file; `prunelab compact PLAN --weights CKPT --out DIR` compacts a dense checkpoint to it.
#
# **Scale.** The cached results are at the scale they were made at (each entry says so). At `ci` scale
# the notebook also prunes a tiny network on the spot, so that run-folder discovery is exercised too.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("PRUNELAB_SCALE", "auto")  # auto | ci | cpu
RUNS = os.environ.get("PRUNELAB_RUNS", "runs")  # run folders to search (comma-separated); missing ones are skipped

# %%
import tempfile
from pathlib import Path

import pandas as pd

from prunelab.data.cifar import load_cifar10
from prunelab.experiments import RESULTS_DIR, resolve_scale
from prunelab.experiments.catalog import catalog
from prunelab.viz import use_style

use_style()
SCALE = resolve_scale(SCALE, "quickstart")
folders = [Path(p) for p in RUNS.split(",") if p and Path(p).exists()]
if SCALE == "ci":  # a tiny pruning run made here, so that the explorer reads a run directory as well
    from prunelab.config import load_config
    from prunelab.workflows import run_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="prunelab-explorer-"))
    cfg = load_config("resnet20_l1", "ci", overrides={"train": {"progress": False}})
    run_pipeline(cfg, tmp / "l1-ci", quiet=True)
    folders.append(tmp)
entries = catalog(RESULTS_DIR, runs=folders)
print(f"running at {SCALE} scale; {len(entries)} networks: cached results in {RESULTS_DIR.name}/ and runs under "
      f"{', '.join(map(str, folders)) or '(no run folder found)'}")
pd.DataFrame([{"network": e.key, "model": e.model, "kind": e.kind, "method": e.method, "scale": e.scale,
               "accuracy (%)": None if e.accuracy is None else round(100 * e.accuracy, 2), "measured": e.accuracy_note}
              for e in entries.values()])

# %% [markdown]
# ## The explorer

# %%
from prunelab.viz.widgets import RunExplorer

first = next((k for k in entries if k.startswith("quickstart")), next(iter(entries)))
second = next((k for k in entries if k.startswith("ddnp") and "full" in k),
              next((k for k in entries if k != first and entries[k].model == entries[first].model), None))
explorer = RunExplorer(entries, scale=SCALE, images=load_cifar10().test_images, first=first, second=second)
assert "M MACs" in explorer.label.value
display(explorer.widget)

# %% [markdown]
# The same two networks as a static figure (what the widget draws, kept in the saved notebook: widget
# output is live only in a running kernel).

# %%
import matplotlib.pyplot as plt

from prunelab.analysis.structures import layer_costs
from prunelab.viz.explorer import plot_cost_shares, plot_widths_vs_full
from prunelab.viz.style import save_figure

pair = [entries[first]] + ([entries[second]] if second and entries[second].model == entries[first].model else [])
pspec = explorer.spec_of(pair[0])
names = [n for n in pspec.names if any(n in e.widths for e in pair)]
fig, axes = plt.subplots(1, 2, figsize=(14, 3.8))
plot_widths_vs_full({n: pspec.tensor(n).channels for n in names}, {e.key: e.widths for e in pair}, ax=axes[0],
                    scale=pair[0].scale or SCALE, title="Channels kept per gated tensor")
plot_cost_shares({e.key: [r for r in layer_costs(pspec, e.widths) if r["name"] in names] for e in pair}, ax=axes[1],
                 which="macs_share", scale=pair[0].scale or SCALE)
fig.tight_layout()
save_figure(fig, "explorer_pair", "05_explorer")
plt.show()

# %% [markdown]
# Driving it from code does what the controls do (the browser test in `tests/test_browser.py` moves them
# in JupyterLab): the cost-share view, a dynamic network's most expensive test image, and an export.

# %%
explorer.view.value = "MACs share"
dynamic = [k for k, e in entries.items() if e.kind == "dynamic" and e.per_instance is not None]
if dynamic:
    explorer.first.value = dynamic[0]
    explorer.view.value = "per instance"
    explorer.instance.value = explorer.instance.max
    print(explorer.label.value)
explorer.first.value = first
explorer.view.value = "widths"
plan = explorer.export()
print(explorer.label.value)
assert plan is not None and plan.exists()
