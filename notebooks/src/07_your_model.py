# %% [markdown]
# # Your own model: torchvision's ResNet-18 on CIFAR-10, pruned to half its MACs
#
# Nothing here is prunelab's own model. The notebook takes torchvision's `resnet18`, gives it the usual
# CIFAR stem (a 3×3 stride-1 first conv, no max-pool), and then
#
# 1. **describes** it by tracing (`models.describe(net, example_input=x)`): the prunable channel tensors,
#    the residual trunks that must keep one channel set, and the slot sets the methods gate;
# 2. **prunes it without training** to 50 % of its MACs with weight magnitude (`l1`), compacts it to a
#    plain smaller `nn.Module`, checks that the compact network computes what the masked one does, and
#    counts its MACs with prunelab's counter **and** with an independent one (`ptflops`);
# 3. **trains** it: a short dense run, then `l1` (prune + fine-tune) and `ddnp` (a learned search, then
#    extraction + fine-tune) at 50 % MACs from the same dense weights, with the accuracy logged at every
#    stage boundary;
# 4. opens the **explorer** on the two pruned networks.
#
# **Scale.** The parameter cell picks it: `ci` (250 images, one epoch per stage: mechanics only, the
# accuracies mean nothing) or `cpu` (2,000 training images, 1–5 epochs per stage from a random initialisation on 2 CPU cores: about
# ten minutes at the model's real size; the accuracies are far from converged). Every figure and table names its scale.
# The model is registered in this process with `register_model`; from the command line the same model
# is a `model: {builder: "mymodels:resnet18_cifar"}` entry in the YAML, or a registered name loaded with
# `--import mymodels.py` (README, "Your own model").

# %% tags=["parameters"]
import os

SCALE = os.environ.get("PRUNELAB_SCALE", "ci")  # ci | cpu

# %%
import copy
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn as nn
import torchvision

from prunelab import methods, models
from prunelab.counting import count
from prunelab.pruning.budget import Budget
from prunelab.pruning.compact import compact
from prunelab.viz import save_figure, scale_label, use_style

use_style()
torch.manual_seed(0)
if SCALE not in ("ci", "cpu"):
    raise ValueError(f"SCALE must be 'ci' or 'cpu', got {SCALE!r}")
print(f"running at {SCALE} scale; torch {torch.__version__}, torchvision {torchvision.__version__}")

# %% [markdown]
# ## 1. The model, described by tracing
#
# A torchvision model as it is; only the stem changes for 32×32 images.

# %%
def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a CIFAR stem: 3x3 stride-1 first conv, no max-pool."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


net = resnet18_cifar()
spec = models.describe(net, example_input=torch.randn(1, 3, 32, 32))
trunks = spec.trunks()
print(f"{spec.model}: {len(spec.tensors)} prunable channel tensors, {len(trunks)} residual trunks, "
      f"slot sets {spec.slot_sets}")
pd.DataFrame([{"tensor": t.name, "slot": t.slot, "channels": t.channels, "produced by": t.conv,
               "trunk": t.trunk or ""} for t in spec.tensors])

# %% [markdown]
# Each trunk is a set of tensors added together by residual connections: they must keep the same channels,
# so a method prunes a trunk as one group (`groups: trunk`) or leaves it alone.

# %%
pd.DataFrame([{"trunk": k, "members": ", ".join(v)} for k, v in trunks.items()])

# %% [markdown]
# ## 2. Prune without training, compact, count twice
#
# Weight magnitude on the random initialisation (the point here is the mechanics; section 3 trains).
# These eight lines are the whole job:

# %%
t0 = time.perf_counter()
method = methods.create("l1", groups="trunk", slots=list(spec.slot_sets["outputs"]))  # trunks too, one mask each
structure, report = method.select(net, spec, Budget("macs", 0.5))
small = compact(net, structure)  # checks itself against the masked network: never a broken module
prune_s = time.perf_counter() - t0
print(f"l1 at 50 % MACs: {report.achieved / 1e6:.1f} M of {count(spec).macs / 1e6:.1f} M MACs "
      f"({report.achieved / count(spec).macs:.3f} of dense), selected and compacted in {prune_s:.2f} s")

# %% [markdown]
# An independent counter on the dense and the compact module: `ptflops`. Its `aten` backend counts the
# multiply-accumulates of `aten.convolution` and the matrix products, which is prunelab's convention (conv
# and linear MACs; BN, activations, pooling and additions are not MACs); its `pytorch` backend hooks modules
# and also counts BatchNorm, ReLU and pooling, so it reads a little higher. Params are every parameter of
# the module in both.

# %%
from ptflops import get_model_complexity_info


def ptflops_count(module: nn.Module, backend: str = "aten") -> tuple[int, int]:
    """(MACs, params) of one 3x32x32 image as counted by ptflops' ``backend``."""
    macs, params = get_model_complexity_info(copy.deepcopy(module).eval(), (3, 32, 32), as_strings=False,
                                             backend=backend, print_per_layer_stat=False, verbose=False)
    return int(macs), int(params)


rows = []
for label, module, c in (("dense", net, count(spec)), ("l1 50 % (compact)", small, count(spec, structure))):
    aten_macs, aten_params = ptflops_count(module, "aten")
    rows.append({"network": label, "prunelab MACs (M)": c.macs / 1e6, "ptflops aten MACs (M)": aten_macs / 1e6,
                 "ptflops pytorch backend (M)": ptflops_count(module, "pytorch")[0] / 1e6,
                 "prunelab params (M)": c.params / 1e6, "ptflops params (M)": aten_params / 1e6})
    assert c.macs == aten_macs and c.params == aten_params, (label, c, aten_macs, aten_params)
pd.DataFrame(rows).round(4)

# %% [markdown]
# ## 3. Train: dense, then `l1` and `ddnp` at 50 % MACs from the same weights
#
# The model is registered under a name in this process, so configs can name it. Every run writes a run
# folder (config, metrics, checkpoints, the pruned structure as a JSON plan, result with the accuracy at
# each stage boundary).

# %%
from prunelab.config import load_config
from prunelab.train.run import train
from prunelab.workflows import run_pipeline

if "resnet18_cifar" not in models.list_models():
    models.register_model("resnet18_cifar")(resnet18_cifar)

# ResNet-18 with a CIFAR stem costs 0.56 G MACs per image (14x ResNet-20): on 2 CPU cores it trains at about
# 20 images/s, so the cpu scale is a short demonstration at the real size, not a converged result
SETTINGS = {  # images per class, epochs of each stage, DDNP's search split and generator learning rate
    "ci": {"train_per_class": 25, "test_per_class": 10, "dense": 1, "finetune": 1, "search": 2, "batch": 50,
           "holdout": 0.25, "gen_lr": 3e-3},
    "cpu": {"train_per_class": 200, "test_per_class": 50, "dense": 4, "finetune": 1, "search": 5, "batch": 50,
            "holdout": 0.5, "gen_lr": 2e-2},
}[SCALE]
data = {"train_per_class": SETTINGS["train_per_class"], "test_per_class": SETTINGS["test_per_class"],
        "batch_size": SETTINGS["batch"]}
out = Path(tempfile.mkdtemp(prefix="prunelab-07-")) if SCALE == "ci" else Path("runs") / "07_your_model"
quiet = {"train": {"progress": False}}

dense_cfg = load_config("resnet20", SCALE, overrides={"name": "resnet18-cifar", "model": {"name": "resnet18_cifar"},
                                                     "data": data, "train": {"epochs": SETTINGS["dense"], "progress": False},
                                                     "optim": {"lr": 0.05}})
t0 = time.perf_counter()
dense = train(dense_cfg, out / "dense", resume=True, quiet=True)
times = {"dense": time.perf_counter() - t0}
print(f"dense: {100 * dense['final']['test_acc']:.2f} % test accuracy after {SETTINGS['dense']} epochs "
      f"({times['dense']:.0f} s)")

# %%
init = {"stages": {"pretrain": {"init_from": str(out / "dense" / "model.pt")}}}
l1_cfg = load_config("resnet20_l1", SCALE, overrides={
    "name": "resnet18-cifar-l1", "model": {"name": "resnet18_cifar"}, "data": data, **quiet,
    "method": {"groups": "trunk", "slots": list(spec.slot_sets["outputs"])},
    "stages": {**init["stages"], "finetune": {"train": {"epochs": SETTINGS["finetune"]}}}})
ddnp_cfg = load_config("resnet20_ddnp", SCALE, overrides={
    "name": "resnet18-cifar-ddnp", "model": {"name": "resnet18_cifar"}, "data": data, **quiet,
    "method": {"gate_lr": SETTINGS["gen_lr"], "width_lr": SETTINGS["gen_lr"]},
    "stages": {**init["stages"],
               "learn": {"data": {"holdout": SETTINGS["holdout"], "test_per_class": SETTINGS["test_per_class"], "val_per_class": 10,
                                  "batch_size": SETTINGS["batch"]}, "train": {"epochs": SETTINGS["search"]}},
               "finetune": {"data": {"batch_size": SETTINGS["batch"]}, "train": {"epochs": SETTINGS["finetune"]}}}})
results = {}
for name, cfg in (("l1", l1_cfg), ("ddnp", ddnp_cfg)):
    t0 = time.perf_counter()
    results[name] = run_pipeline(cfg, out / name, resume=True, quiet=True)
    times[name] = time.perf_counter() - t0

stages = pd.DataFrame([{
    "method": name, "dense (%)": 100 * r["dense_test_acc"],
    "learned, gated (%)": None if r.get("learned_test_acc") is None else 100 * r["learned_test_acc"],
    "after hard pruning (%)": 100 * r["pruned_test_acc_before_finetune"], "after fine-tuning (%)": 100 * r["final_test_acc"],
    "MACs (M)": r["final_cost"]["regular"]["macs"] / 1e6,
    "of dense": r["final_cost"]["regular"]["macs"] / r["dense_cost"]["regular"]["macs"],
    "wall time (s)": times[name]} for name, r in results.items()]).round(3)
print(f"{SCALE} scale: accuracy at each stage boundary, test split of {10 * SETTINGS['test_per_class']} images")
stages

# %% [markdown]
# The compact networks of both runs, loaded back from their run folders (`compact/`: the plan and the
weights) and counted again by ptflops.

# %%
from prunelab.pruning.compact import load_compact
from prunelab.pruning.structure import Structure

registered_spec = models.describe(models.create("resnet18_cifar"))  # the plans name the registered model
fig, ax = plt.subplots(figsize=(6.5, 3.6))
names, measured, counted = [], [], []
for name in results:
    small_net = load_compact(out / name / "compact")  # a plain nn.Module, rebuilt from the plan in the folder
    names.append(name)
    measured.append(ptflops_count(small_net)[0] / 1e6)
    counted.append(count(registered_spec, Structure.load(out / name / "structure.json")).macs / 1e6)
x = range(len(names))
ax.bar([i - 0.2 for i in x], counted, 0.4, label="prunelab counter")
ax.bar([i + 0.2 for i in x], measured, 0.4, label="ptflops (aten backend)")
ax.axhline(count(spec).macs / 2e6, color="k", ls="--", lw=1, label="50 % of dense")
ax.set_xticks(list(x), names)
ax.set_ylabel("MACs per 32×32 image (M)")
ax.set_title(f"ResNet-18 (CIFAR stem) pruned to 50 % MACs, two counters\n{scale_label(SCALE)}")
ax.legend(fontsize=8)
save_figure(fig, "macs_two_counters", "07_your_model")
plt.show()

# %% [markdown]
# ## 4. The explorer on the two pruned networks

# %%
from prunelab.data.cifar import load_cifar10
from prunelab.experiments.catalog import catalog
from prunelab.viz.widgets import RunExplorer

entries = catalog(out, runs=[out], quiet=True)  # no cached study results here: only the run folders
mine = {k: e for k, e in entries.items() if e.model == "resnet18_cifar"}
print(f"{len(mine)} networks of resnet18_cifar in {out}: {', '.join(mine)}")
keys = list(mine)
explorer = RunExplorer(mine, scale=SCALE, images=load_cifar10().test_images, first=keys[0],
                       second=keys[1] if len(keys) > 1 else None)
display(explorer.widget)

# %% [markdown]
# The same comparison as a static figure (widget output is live only in a running kernel).

# %%
from prunelab.analysis.structures import layer_costs
from prunelab.viz.explorer import plot_cost_shares, plot_widths_vs_full

pair = [mine[k] for k in keys[:2]]
pspec = explorer.spec_of(pair[0])
names = [n for n in pspec.names if any(n in e.widths for e in pair)]
fig, axes = plt.subplots(1, 2, figsize=(14, 3.8))
plot_widths_vs_full({n: pspec.tensor(n).channels for n in names}, {e.key: e.widths for e in pair}, ax=axes[0],
                    scale=SCALE, title="ResNet-18 (CIFAR stem): channels kept per gated tensor")
plot_cost_shares({e.key: [r for r in layer_costs(pspec, e.widths) if r["name"] in names] for e in pair}, ax=axes[1],
                 which="macs_share", scale=SCALE)
fig.tight_layout()
save_figure(fig, "explorer_pair", "07_your_model")
plt.show()
