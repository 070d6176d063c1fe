# %% [markdown]
# # prunelab quickstart
#
# The path of the data through prunelab: **config → data → model + method → trainer → run directory →
# analysis → plots**. This notebook
#
# 1. loads CIFAR-10 (decoded once, held as one uint8 tensor, augmented in batches);
# 2. lists the model zoo with the costs of every model, counted by one analytical counter;
# 3. shows a dense ResNet-20 trained with the one-cycle recipe and the same network pruned to 50 % MACs
#    with weight magnitude (`l1`) and fine-tuned;
# 4. checks that the physically compacted network computes exactly what the masked one does;
# 5. lets you move the MAC budget and see which channels the budget solver keeps.
#
# **Scale.** The parameter cell below picks it: `auto` uses the cached `cpu`-scale results (real
# CIFAR-10, a 30-epoch dense run + 8 fine-tuning epochs on 2 CPU cores) when they exist, otherwise it trains a `ci`-scale version
# (250 images, seconds) on the spot. Every figure names the scale it was produced at. The cached results
# come from `prunelab experiment quickstart --scale cpu`.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("PRUNELAB_SCALE", "auto")  # auto | ci | cpu

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from prunelab import models
from prunelab.counting import count
from prunelab.data.cifar import CLASSES, load_cifar10
from prunelab.data.loader import CifarLoader
from prunelab.experiments import load_results, provenance_note, resolve_scale
from prunelab.pruning.structure import Structure
from prunelab.viz import save_figure, scale_label, use_style

use_style()
torch.manual_seed(0)
SCALE = resolve_scale(SCALE, "quickstart")
print(f"running at {SCALE} scale")

# %% [markdown]
# ## 1. Data
#
# The whole split lives on the training device as one uint8 tensor; a batch is gathered by index,
# padded by 4 pixels, randomly cropped and flipped, and normalised there. Each batch also carries the
# dataset index of every sample.

# %%
ds = load_cifar10()
print(f"CIFAR-10 from {ds.source} ({ds.path}): train {ds.train_images.shape}, test {ds.test_images.shape}")
sel = np.arange(0, 50000, 97)  # every class (the stored arrays are sorted by class)
loader = CifarLoader(ds.train_images[sel], ds.train_labels[sel], sel, batch_size=8, seed=0)
x, y, idx = next(iter(loader))
fig, axes = plt.subplots(2, 8, figsize=(10, 3))
mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
for j in range(8):
    axes[0, j].imshow(ds.train_images[int(idx[j])].transpose(1, 2, 0))
    axes[0, j].set_title(f"#{int(idx[j])}\n{CLASSES[int(y[j])]}", fontsize=7)
    axes[1, j].imshow((x[j].float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
for a in axes.flat:
    a.axis("off")
axes[0, 0].text(-40, 16, "stored", fontsize=8)
axes[1, 0].text(-40, 16, "augmented", fontsize=8)
fig.suptitle("CIFAR-10 training images and their augmented versions (pad-4 crop + flip, made on the device)", fontsize=9)
save_figure(fig, "data_batch", "00_quickstart")
plt.show()

# %% [markdown]
# ## 2. The model zoo and its costs
#
# Every model describes its prunable channels (the *gated tensors*) in one form. MACs count conv and
# linear multiply-accumulates; FLOPs = 2 × MACs; V is the activation volume of the gated tensors
# (BAR's budget). ImageNet models are counted at 224×224.

# %%
rows = []
for name in models.list_models():
    kw = {"k": 1} if name == "bar_wrn" else {}
    m = models.create(name, **kw)
    spec = models.describe(m)
    c = count(m)
    rows.append({"model": name + (" (k=1)" if kw else ""), "input": "x".join(map(str, spec.input_size[1:])),
                 "MMACs": round(c.macs / 1e6, 2), "GFLOPs": round(c.flops / 1e9, 3), "params (M)": round(c.params / 1e6, 3),
                 "V": int(c.volume), "gated tensors": len(spec.tensors), "slots": ", ".join(spec.slots())})
zoo = pd.DataFrame(rows).set_index("model")
zoo

# %%
# the pinned cross-check values of the design document
r20, r56 = count(models.create("resnet20")), count(models.create("resnet56"))
wrn = count(models.create("bar_wrn"))
assert round(r20.macs / 1e6, 2) == 40.55 and round(r56.macs / 1e6, 2) == 125.49
assert wrn.volume == 3_112_960 and round(wrn.macs / 1e9, 3) == 7.544
print(r20)

# %% [markdown]
# ## 3. Train a dense ResNet-20, prune it to 50 % MACs, fine-tune
#
# `prunelab train resnet20` trains the dense network; `prunelab prune resnet20_l1` scores every
# block-middle channel by the L1 norm of its filter (normalised per layer), ranks them globally, lets
# the budget solver keep the largest set that fits in 50 % of the MACs, compacts the network and
# fine-tunes it.

# %%
res = load_results("quickstart", SCALE)
print(provenance_note(res))

# %%
dense, l1 = res["dense"], res["l1"]
fig, ax = plt.subplots(figsize=(6.5, 3.8))
d = [m for m in dense["metrics"] if "test_acc" in m]
ax.plot([m["epoch"] for m in d], [100 * m["test_acc"] for m in d], "o-", label="dense ResNet-20 (40.55 MMACs)")
f = [m for m in l1["metrics"] if m.get("stage") == "finetune"]
n0 = len(d)
ax.plot([n0 + m["epoch"] for m in f], [100 * m["test_acc"] for m in f], "s-",
        label=f"l1-pruned, fine-tuned ({l1['pruned_cost']['mixed']['macs'] / 1e6:.2f} MMACs)")
ax.axvline(n0 + 0.5, color="0.6", ls=":")
ax.set_xlabel("epoch")
ax.set_ylabel("test accuracy (%)")
ax.set_title(f"Dense training, then pruning to 50% MACs and fine-tuning\n{scale_label(SCALE)}")
ax.legend()
save_figure(fig, "train_prune_finetune", "00_quickstart")
plt.show()
print(f"dense: {100 * dense['final']['test_acc']:.2f}% after {dense['epochs']} epochs "
      f"({dense['wall_time_s'] / 60:.1f} min, {dense['environment']['cpu_threads']} CPU thread(s))")
print(l1["summary"])

# %%
report = l1["budget_report"]
print(f"budget: {report['target'] / 1e6:.3f} M MACs; achieved {report['achieved'] / 1e6:.3f} M "
      f"({100 * report['relative_error']:+.2f}% of the target)")
assert report["achieved"] <= report["target"] and abs(report["relative_error"]) <= 0.005
if SCALE == "cpu":
    # the foundation's acceptance bar is >= 85% after 15 epochs (a minimal raw loop reached 85.0%);
    # this dense run trained 30 epochs, so it must clear the bar too
    assert dense["final"]["test_acc"] >= 0.85, dense["final"]["test_acc"]

# %% [markdown]
# ## 4. The pruned structure, compacted
#
# The plan is a small JSON file (alive channels per gated tensor). Compaction slices the conv and BN
# weights; the compact network must compute exactly what the masked network computes.

# %%
from prunelab.pruning.compact import compact, fold_batchnorm
from prunelab.pruning.gates import FixedGate, GatedModel
from prunelab.viz.widgets import plot_structure_widths

structure = Structure.from_dict(l1["structure"])
spec = models.describe(models.create("resnet20"))
fig, ax = plt.subplots(figsize=(8, 3))
plot_structure_widths(spec, structure, ax=ax, scale=SCALE, title="l1 structure at 50% MACs")
save_figure(fig, "l1_structure", "00_quickstart")
plt.show()

net = models.create("resnet20").eval()
masked = GatedModel(net, {n: FixedGate.from_alive(spec.tensor(n).channels, a) for n, a in structure.alive.items()}).eval()
small = compact(net, structure).eval()
folded = fold_batchnorm(small)
xb = torch.randn(16, 3, 32, 32)
with torch.no_grad():
    diff = (masked(xb) - small(xb)).abs().max().item()
    diff_folded = (masked(xb) - folded(xb)).abs().max().item()
print(f"max |masked - compact| = {diff:.2e}, with BN folded {diff_folded:.2e}; "
      f"compact params {sum(p.numel() for p in small.parameters()):,} vs dense {sum(p.numel() for p in net.parameters()):,}")
assert diff < 1e-4 and diff_folded < 1e-4

# %% [markdown]
# ## 5. Explore the budget
#
# Move the slider: the budget solver re-ranks the trained network's l1 scores and keeps the largest
# channel set within the MAC budget (`global`), or the same fraction of every layer (`uniform`).

# %%
from prunelab.viz.widgets import BudgetExplorer

scores = {n: np.asarray(v) for n, v in l1["scores"].items()}
explorer = BudgetExplorer(spec, scores, keep=0.5, scale=SCALE)
explorer.widget

# %%
explorer.slider.value = 0.3  # the same callback a browser would fire
print(explorer.label.value)
assert explorer.report["achieved"] <= explorer.report["target"]

# %% [markdown]
# ## 6. Budgets in measured latency
#
# Fewer MACs are not proportionally less time: which channels go decides how much faster the network
# gets on a given device. `prunelab latency-table resnet20 --batch 128` times every block's layers at
# every width on this machine; `budget: {metric: latency, keep: 0.7, batch: 128}` then asks the budget
# solver for 70 % of the *predicted* inference time (only the block middles are prunable and the rest of
# the network costs about 40 % of the time, so 50 % would leave almost no channels: the study's docstring
# gives the measurement). Below: `l1` budgeted that way, against `l1` with a
# MACs budget tuned (by timing) to the same measured latency, both fine-tuned with the same 8 epochs,
# both compact networks timed side by side with the dense one at the end.

# %%
L = res.get("latency")
if L is None:
    print("these cached results predate the latency part: run `prunelab experiment quickstart --scale cpu`")
else:
    print(f"device: {L['device']}, {L['threads']} threads, torch {L['torch']}, batch {L['batch']}; dense "
          f"{1e3 * L['dense_measured_s']:.2f} ms per call measured ({1e3 * L['dense_predicted_s']:.2f} ms in the table)")
    p = L["prune_stage_latency"]
    print(f"latency budget: target {100 * p['target_keep']:.0f}% of dense, predicted {100 * p['predicted_keep']:.1f}%, "
          f"measured {100 * p['measured_keep']:.1f}% right after pruning")
    display(pd.DataFrame([{"budget": r["label"], "MMACs": round(r["macs"] / 1e6, 2),
                           "MACs / dense (%)": round(100 * r["macs_keep"], 1),
                           f"latency at batch {L['batch']} (ms)": round(1e3 * r["measured_s"], 3),
                           "latency / dense (%)": round(100 * r["measured_keep"], 1),
                           "acc. before fine-tuning (%)": round(100 * r["pruned_test_acc"], 2),
                           "acc. after fine-tuning (%)": round(100 * r["final_test_acc"], 2)} for r in L["rows"]]))
    fig, ax = plt.subplots(figsize=(8, 3))
    names = list(L["rows"][0]["widths"])
    xs = np.arange(len(names))
    full = [spec.tensor(n).channels for n in names]
    ax.bar(xs, full, color="0.85", label="full")
    for i, r in enumerate(L["rows"]):
        ax.bar(xs + (i - 0.5) * 0.4, [r["widths"][n] for n in names], 0.4, label=r["label"])
    ax.set_xticks(xs, [n.replace(".mid", "").replace("layer", "L") for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("channels kept")
    ax.set_title(f"Latency-budgeted vs MACs-budgeted widths at equal measured latency\n{scale_label(SCALE)}")
    ax.legend(fontsize=8)
    save_figure(fig, "latency_vs_macs_widths", "00_quickstart")
    plt.show()
