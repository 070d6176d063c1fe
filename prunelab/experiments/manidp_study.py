"""ManiDP supplement study: dynamic pruning with and without the similarity loss, and the matched
static controls that could show its absence, all from one pretrained checkpoint with one schedule;
aggregated into ``results/manidp_<scale>.json`` (scalars, per-epoch logs) and ``.npz`` (per-instance
arrays the figures and claims recompute from).

Sub-runs (docs/decisions.md M12-M16):

* ``dense``: the checkpoint every other sub-run starts from (ResNet-20, 30 epochs of one-cycle SGD at
  cpu; run it with one thread, ``OMP_NUM_THREADS=1``, so that a later session retrains the same weights);
* ``manidp-with_sim-s<k>``: ManiDP (lambda_sim = 1), seeds ``k`` in ``SETTINGS[scale]["seeds"]``;
* ``manidp-without_sim-s0``: ManiDP without L_sim;
* ``static-s<k>``: the *static mask* control of ``manidp-with_sim-s<k>``: every input keeps the same
  channels, the per-layer widths are the dynamic network's mean kept counts over the test images
  (rounded), the channels the ones it kept most often in its last training epoch; trained from the same
  checkpoint for the same epochs with the same optimiser and schedule (method ``plan``);
* ``l1-s0``: weight magnitude at the mean MACs of ``manidp-with_sim-s0``, same epochs and schedule.

Scales:

* ``paper``: ResNet-56 from a pretrained checkpoint, 400 epochs, lambda' = 5e-3, lambda_sim = 1, r* = 0.6
  (the official README, unchanged). Needs a GPU.
* ``cpu``: ResNet-20 from the 30-epoch checkpoint, the schedule of ``configs/resnet20_manidp.yaml``
  (its cpu block: epochs, lr, lambda' scaled so that the cumulative sparsity push matches the official
  recipe's, remain rate reaching r* halfway and thresholds then held fixed), full CIFAR-10, batch 128.
* ``ci``: a few hundred images, one epoch of pre-training, four of ManiDP: mechanics only.

The study is a plan for the study runner (:mod:`.runner`): ``dense``, then the dynamic sub-runs (each
needs ``dense``), then the controls, each of which needs ``dense`` and the with-L_sim run it is matched
to (the static mask's plan is computed from that run's record and written to ``<out>/plans/`` just
before it trains; l1's MACs budget is that run's mean test MACs); a control reads only the record of
its with-L_sim run, so a copy of that run reused from the committed results is not retrained for it. A session can end on a fresh machine
with ``runs/`` gone; only the results are committed. The runner takes a finished sub-run it no longer
has from the committed results (its record from the JSON, its arrays from the NPZ) when its fingerprint
(config, method code and the fingerprints of the sub-runs it needs) matches (``reused_subruns``);
a run directory filed under another setting is refused by name, a damaged one is skipped by name
(``why_missing``). A partial study is written as ``manidp_<scale>.partial.json`` beside a complete one.

What is kept per dynamic run: the per-epoch log (test accuracy, C, remain rate, thresholds, mean kept
ratio, mean pairwise Jaccard of kept sets, MACs mean/std/min/max); the pretrained network's CE of every
training image; each training image's complexity weight w_i averaged over the epochs and its trajectory
for a seeded sample of 512 images; R^l and T^l (float32, upper triangles) on a fixed seeded batch of 128
class-sorted test images at the end; for every test image and layer its kept-channel count with its
CE, correctness and label, and the kept-channel sets of a seeded sample of test images (bit-packed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import models
from ..analysis.manidp import agreement
from ..config import deep_merge, load_config
from ..counting import count
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from .runner import ARRAYS, Runner, Study, SubRun, register_study

VARIANTS = {"with_sim": {"lambda_sim": 1.0}, "without_sim": {"lambda_sim": 0.0}}  # method overrides
PARTS = ("dense", "manidp", "static", "l1")
TRAJECTORIES = 512
MASK_SAMPLE = 2000  # test images whose kept-channel sets go into the arrays (seeded)
SETTINGS = {"ci": {"seeds": (0,)}, "cpu": {"seeds": (0, 1)}, "paper": {"seeds": (0, 1)}}


def _arr(run: Path, name: str):
    p = run / "arrays" / f"manidp_{name}.npy"
    return np.load(p) if p.exists() else None


def dense_test_ce(dense_dir: Path, cfg) -> np.ndarray:
    """The pretrained network's CE on every test image (by test-set index): the complexity of an image
    for a network that was never pruned."""
    import torch

    from ..train.run import build_loaders
    from ..train.trainer import evaluate, load_weights

    net = models.create(cfg.model.name, **cfg.model.kwargs)
    load_weights(net, dense_dir / "model.pt")
    _, ev = build_loaders(cfg.data, torch.device("cpu"), seed=cfg.train.seed, channels_last=cfg.train.channels_last)
    out = np.full(10000, np.nan, dtype=np.float32)

    def keep(b):
        out[b.idx.cpu().numpy()] = b.ce_per_sample.cpu().numpy()

    evaluate(net.to(memory_format=torch.channels_last) if cfg.train.channels_last else net, ev["test"], collect=keep)
    return out


def _nanmean0(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where a column has no value (images outside a ci subset)."""
    n = (~np.isnan(a)).sum(0)
    return np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), np.nan).astype(np.float32)


def upper(sim: np.ndarray) -> np.ndarray:
    """(layers, 2, B, B) symmetric matrices -> (layers, 2, B(B-1)/2) float32 off-diagonal upper triangles
    (the diagonal is 1 by construction); :func:`prunelab.analysis.manidp.full_matrix` undoes it."""
    b = sim.shape[-1]
    iu = np.triu_indices(b, 1)
    return np.ascontiguousarray(sim[..., iu[0], iu[1]], dtype=np.float32)


def summarize_dynamic(run: Path, layers: list[str]) -> tuple[dict, dict]:
    """(JSON record, arrays) of one finished ManiDP run directory."""
    import torch

    res = read_json(run / "result.json")
    learn = [m for m in read_metrics(run) if m.get("stage") == "learn"]
    weights = _arr(run, "weights").astype(np.float32)  # (epochs, N)
    ref = _arr(run, "reference_ce")
    valid = ~np.isnan(ref)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(np.flatnonzero(valid), size=min(TRAJECTORIES, int(valid.sum())), replace=False))
    agree = {}
    for when in ("start", "middle", "end"):
        sim = _arr(run, f"similarity_{when}")
        if sim is not None:
            agree[when] = {n: agreement(sim[j, 0], sim[j, 1]) for j, n in enumerate(layers)}
    end = _arr(run, "similarity_end")
    # the per-epoch thresholds of every layer, from the method's state saved with the learned weights
    state = torch.load(run / "learn.pt", map_location="cpu", weights_only=True).get("method_state", {})
    thresholds = [r.get("thresholds") for r in state.get("log", [])]
    kept = _arr(run, "test_kept").astype(np.int16)
    masks = _arr(run, "test_masks_packed")
    rows = np.sort(np.random.default_rng(1).choice(len(kept), size=min(MASK_SAMPLE, len(kept)), replace=False))
    record = {
        "kind": "dynamic", "dense_test_acc": res["dense_test_acc"], "final_test_acc": res["final_test_acc"],
        "pruned_cost": res["pruned_cost"], "dense_cost": res["dense_cost"], "budget_report": res["budget_report"],
        "mean_macs": res["pruned_cost"]["mixed"]["macs"],
        "metrics": learn, "agreement": agree, "wall_time_s": res.get("wall_time_s"),
        "train_time_s": res.get("train_time_s"), "thresholds": thresholds,  # epochs x layers (-1e4: unpruned)
        "mean_kept": kept.mean(0).tolist(),
        "train_keep_frequency": _arr(run, "train_keep_frequency").round(6).tolist(),
        "train_saliency_mean": _arr(run, "train_saliency_mean").round(6).tolist(),
    }
    arrays = {
        "reference_ce": ref.astype(np.float32), "weights_mean": _nanmean0(weights),
        "trajectory_index": sample, "trajectories": weights[:, sample].astype(np.float16),
        "similarity_end": upper(end) if end is not None else np.zeros(0, np.float32),
        "similarity_labels": _arr(run, "similarity_labels"), "similarity_index": _arr(run, "similarity_indices"),
        "test_kept": kept, "test_ce": _arr(run, "test_ce").astype(np.float32),
        "test_correct": _arr(run, "test_correct").astype(bool), "test_label": _arr(run, "test_label").astype(np.int8),
        "test_index": _arr(run, "test_index").astype(np.int32),
        "test_masks_rows": rows.astype(np.int32),
        "test_masks_packed": masks[rows] if masks is not None else np.zeros((0, 0), np.uint8),
    }
    return record, arrays


def summarize_static(run: Path) -> tuple[dict, dict]:
    """The record of a finished static sub-run (static mask or l1): accuracy at every stage boundary and
    every epoch, the counted MACs of its structure."""
    res = read_json(run / "result.json")
    return {"kind": "static", "dense_test_acc": res["dense_test_acc"],
            "pruned_test_acc_before_finetune": res.get("pruned_test_acc_before_finetune"),
            "final_test_acc": res["final_test_acc"], "mean_macs": res["pruned_cost"]["mixed"]["macs"],
            "pruned_cost": res["pruned_cost"], "widths": res["budget_report"].get("widths"),
            "metrics": [m for m in read_metrics(run) if m.get("stage") == "finetune"],
            "wall_time_s": res.get("wall_time_s"), "train_time_s": res.get("train_time_s")}, {}


def static_plan(spec, layers: list[str], record: dict) -> Structure:
    """The static mask of a dynamic run: per layer its mean kept count over the test images (rounded, at
    least 1), the channels it kept most often in its last training epoch (ties: higher mean saliency)."""
    freq, sal = np.asarray(record["train_keep_frequency"]), np.asarray(record["train_saliency_mean"])
    alive, at = {}, 0
    for name, k in zip(layers, record["mean_kept"]):
        c = spec.tensor(name).channels
        order = np.lexsort((-sal[at:at + c], -freq[at:at + c]))  # primary key last: frequency, then saliency
        alive[name] = np.sort(order[:max(1, int(round(k)))])
        at += c
    return Structure._make(spec, alive, meta={"rule": "static mask of a ManiDP run: mean kept counts, most kept"})


def _prefix(variant: str, seed: int) -> str:
    """Array prefix of a dynamic run: the variant name for seed 0 (what the figures read), else -s<k>."""
    return variant if seed == 0 else f"{variant}-s{seed}"


# ---------------------------------------------------------------------------------------------------
# configs and records of the sub-runs

QUIET = {"train": {"progress": False}}


def _dense_config(scale: str):
    dense_over = {"train": {"epochs": 30}} if scale == "cpu" else {}
    return load_config("resnet20" if scale != "paper" else "resnet56", scale, overrides=deep_merge(QUIET, dense_over))


def _init(deps) -> dict:
    return {"stages": {"pretrain": {"init_from": str(deps.dir("dense") / "model.pt")}}}


def _base(scale: str):
    """The ManiDP config at ``scale`` (its model, method options and learning schedule)."""
    return load_config("resnet20_manidp", scale, overrides=QUIET)


def _model(scale: str):
    """``(spec, layers)``: the study model's description and its gated tensors (block middles and deltas)."""
    base = _base(scale)
    spec = models.describe(models.create(base.model.name, **base.model.kwargs))
    return spec, [t.name for t in spec.select(("mid", "delta"))]


def _control(scale: str) -> dict:
    """The static controls' model and stages: the dynamic runs' model; no learning stage; a fine-tuning
    stage with the dynamic runs' epochs, optimiser and schedule, from the same checkpoint."""
    base = _base(scale)
    learn = base.stages["learn"]
    return {"model": {"name": base.model.name, "kwargs": dict(base.model.kwargs)},  # resnet56 at paper scale
            "stages": {"learn": {"enabled": False},
                       "finetune": {"enabled": True, "train": learn.get("train", {}), "optim": learn.get("optim", {}),
                                    "schedule": learn.get("schedule", {})}}}


def _dynamic_config(scale: str, variant: str, seed: int, deps):
    return load_config("resnet20_manidp", scale, overrides=deep_merge(QUIET, deep_merge(_init(deps), {
        "method": VARIANTS[variant], "train": {"seed": seed}})))


def _plan_file(deps, seed: int) -> Path:
    return deps.out / "plans" / f"static-s{seed}.json"


def _static_config(scale: str, seed: int, deps):
    # only the plan's path goes into the config; the runner builds it once manidp-with_sim-s<seed> (a need)
    # is finished, and writes the plan from that run's record just before this one trains (prepare)
    return dataclasses.replace(load_config("resnet20_l1", scale, overrides=deep_merge(QUIET, deep_merge(
        deep_merge(_init(deps), _control(scale)),
        {"method": {"name": "plan", "plan": str(_plan_file(deps, seed))}, "train": {"seed": seed}}))),
        budget={})  # the plan is the structure: no budget


def _write_static_plan(scale: str, seed: int, deps) -> None:
    """Write the static mask of ``manidp-with_sim-s<seed>`` where the static sub-run's config names it."""
    spec, layers = _model(scale)
    f = _plan_file(deps, seed)
    f.parent.mkdir(parents=True, exist_ok=True)
    static_plan(spec, layers, deps.record(f"manidp-with_sim-s{seed}")).save(f)


def _l1_config(scale: str, seed: int, deps):
    spec, _ = _model(scale)
    keep = deps.record(f"manidp-with_sim-s{seed}")["mean_macs"] / count(spec).macs
    return load_config("resnet20_l1", scale, overrides=deep_merge(QUIET, deep_merge(
        deep_merge(_init(deps), _control(scale)), {"budget": {"metric": "macs", "keep": round(keep, 6)},
                                                   "train": {"seed": seed}})))


def dense_record(run: Path, scale: str) -> dict:
    """The dense checkpoint's record: its test accuracy, epochs and weights fingerprint, and (array
    ``dense_test_ce``) its CE on every test image."""
    from ..train.trainer import weights_fingerprint

    res = read_json(run / "result.json")
    return {"test_acc": res["final"]["test_acc"], "epochs": res["epochs"],
            "weights_sha256": weights_fingerprint(run / "model.pt"),
            ARRAYS: {"dense_test_ce": dense_test_ce(run, _dense_config(scale))}}


def dynamic_record(run: Path, scale: str) -> dict:
    """:func:`summarize_dynamic` as one record (its arrays under ``"arrays"``)."""
    rec, arr = summarize_dynamic(run, _model(scale)[1])
    return {**rec, ARRAYS: arr}


def static_record(run: Path) -> dict:
    """:func:`summarize_static` as one record."""
    return summarize_static(run)[0]


# ---------------------------------------------------------------------------------------------------
# the study


def _dynamic_runs(scale: str, parts: tuple) -> list[tuple]:
    """``(variant, seed)`` of the dynamic sub-runs in the plan: with_sim at every seed (also when only the
    controls are asked for: they are made from it), without_sim at the first seed (part ``manidp``)."""
    seeds = SETTINGS[scale]["seeds"]
    out = []
    if {"manidp", "static", "l1"} & set(parts):
        out += [("with_sim", s) for s in seeds]
    if "manidp" in parts:
        out += [("without_sim", s) for s in seeds[:1]]
    return out


@register_study("manidp")
class ManiDPStudy(Study):
    """The ManiDP study as a plan: the dense checkpoint; ManiDP with L_sim at every seed and without it at
    the first; per seed the static mask of the with-L_sim run (needs that run: its plan is made from its
    record); l1 at the mean MACs of the first seed's with-L_sim run (needs it too)."""

    parts = PARTS

    def subruns(self, scale: str, parts: tuple) -> list[SubRun]:
        seeds = SETTINGS[scale]["seeds"]
        learn_epochs = int(_base(scale).stages["learn"].get("train", {}).get("epochs", 0)) or None
        subs = [SubRun("dense", "train", lambda deps: _dense_config(scale), part="dense", label="dense checkpoint",
                       summarize=lambda d: dense_record(d, scale), arrays="")]
        for variant, seed in _dynamic_runs(scale, parts):
            subs.append(SubRun(
                f"manidp-{variant}-s{seed}", "pipeline",
                lambda deps, variant=variant, seed=seed: _dynamic_config(scale, variant, seed, deps),
                needs=("dense",), part="manidp", label=f"ManiDP {variant} seed {seed}", epochs=learn_epochs,
                summarize=lambda d: dynamic_record(d, scale), arrays=_prefix(variant, seed)))
        if "static" in parts:
            for seed in seeds:
                subs.append(SubRun(
                    f"static-s{seed}", "pipeline", lambda deps, seed=seed: _static_config(scale, seed, deps),
                    needs=("dense", f"manidp-with_sim-s{seed}"), inputs=("dense",), part="static",
                    label=f"static mask seed {seed}",
                    summarize=static_record, epochs=learn_epochs,
                    prepare=lambda deps, seed=seed: _write_static_plan(scale, seed, deps)))
        if "l1" in parts:
            subs.append(SubRun(
                f"l1-s{seeds[0]}", "pipeline", lambda deps: _l1_config(scale, seeds[0], deps),
                needs=("dense", f"manidp-with_sim-s{seeds[0]}"), inputs=("dense",), part="l1",
                label=f"l1 seed {seeds[0]}",
                summarize=static_record, epochs=learn_epochs))
        return subs

    def aggregate(self, scale: str, parts: tuple, records: dict, out: Path) -> dict:
        seeds = SETTINGS[scale]["seeds"]
        base = _base(scale)
        spec, layers = _model(scale)
        study = {"study": "manidp", "scale": scale, "command": f"prunelab experiment manidp --scale {scale} --out {out}",
                 "variants": {}, "runs": [], "parts": list(parts), "seeds": list(seeds)}
        dense = records.get("dense")
        if dense is not None:
            study["dense"] = {k: dense[k] for k in ("test_acc", "epochs", "weights_sha256")}
        study.update({"model": base.model.name, "layers": layers, "channels": [spec.tensor(n).channels for n in layers],
                      "dense_macs": count(spec).macs, "hyperparameters": base.method,
                      "schedule": {"learn": base.stages["learn"]}})

        def row(rec: dict, name: str, prefix=None, **fields) -> dict:
            return {**{k: v for k, v in rec.items() if k != ARRAYS}, **fields, "subrun": name, "prefix": prefix}

        for variant, seed in _dynamic_runs(scale, parts):
            name = f"manidp-{variant}-s{seed}"
            if name in records:
                r = row(records[name], name, _prefix(variant, seed), variant=variant, seed=seed,
                        lambda_sim=VARIANTS[variant]["lambda_sim"])
                study["runs"].append(r)
                if seed == seeds[0]:
                    study["variants"][variant] = r
        for seed in seeds if "static" in parts else ():
            src = f"manidp-with_sim-s{seed}"
            if f"static-s{seed}" in records:  # its plan: a function of its source's record (None if that is damaged)
                plan = static_plan(spec, layers, records[src]).to_dict() if src in records else None
                study["runs"].append(row(records[f"static-s{seed}"], f"static-s{seed}", variant="static", seed=seed,
                                         source=src, plan=plan))
        if "l1" in parts and f"l1-s{seeds[0]}" in records:
            study["runs"].append(row(records[f"l1-s{seeds[0]}"], f"l1-s{seeds[0]}", variant="l1", seed=seeds[0],
                                     source=f"manidp-with_sim-s{seeds[0]}"))
        # filled in by the runner (listed here to keep the results file's key order)
        study.update({"missing": [], "reused_subruns": [], "complete": False, "wall_time_s": None, "created": None})
        return study


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False,
        executor=None, shard=None) -> dict:
    """Run (or continue) the ManiDP study at ``scale`` on the study runner (:mod:`.runner`); writes the
    results JSON and its arrays (NPZ). ``collect``: train nothing, aggregate the finished sub-runs and
    list the missing ones."""
    return Runner("manidp", scale, out, parts=parts, results=results, collect=collect, quiet=quiet,
                  executor=executor, shard=shard).run()
