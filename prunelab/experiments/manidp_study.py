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

A session can end on a fresh machine with ``runs/`` gone; only the results are committed. Every
sub-run's record carries its config fingerprint and the dense weights' fingerprint; a rerun retrains
the dense checkpoint (deterministic at one thread) and takes a finished sub-run it no longer has from
the committed results (record and arrays) when both fingerprints and the method code match
(``reused_subruns``). A partial study is written as ``manidp_<scale>.partial.json`` beside a complete one.

What is kept per dynamic run: the per-epoch log (test accuracy, C, remain rate, thresholds, mean kept
ratio, mean pairwise Jaccard of kept sets, MACs mean/std/min/max); the pretrained network's CE of every
training image; each training image's complexity weight w_i averaged over the epochs and its trajectory
for a seeded sample of 512 images; R^l and T^l (float32, upper triangles) on a fixed seeded batch of 128
class-sorted test images at the end; for every test image and layer its kept-channel count with its
CE, correctness and label, and the kept-channel sets of a seeded sample of test images (bit-packed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .. import models
from ..analysis.manidp import agreement
from ..config import deep_merge, load_config
from ..counting import count
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from ..workflows import run_pipeline, train
from . import REPO_ROOT, open_study, write_results

VARIANTS = {"with_sim": {"lambda_sim": 1.0}, "without_sim": {"lambda_sim": 0.0}}
PARTS = ("dense", "manidp", "static", "l1")
TRAJECTORIES = 512
MASK_SAMPLE = 2000  # test images whose kept-channel sets go into the arrays (seeded)
SETTINGS = {"ci": {"seeds": (0,)}, "cpu": {"seeds": (0, 1)}, "paper": {"seeds": (0, 1)}}
# the files whose code decides what a sub-run trains (a reused record must come from the same code)
SUBRUN_CODE = ("prunelab/methods/manidp.py", "prunelab/methods/plan.py", "prunelab/methods/l1.py")


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


def config_sha(cfg) -> str:
    """Fingerprint of a sub-run: its resolved config (the dense checkpoint's path left out: its weights'
    own fingerprint stands for it) and the code of the methods it may train."""
    d = cfg.to_dict()
    d.get("stages", {}).get("pretrain", {}).pop("init_from", None)
    d.get("method", {}).pop("plan", None)  # a path; the plan is a function of the dynamic run's record
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode())
    for f in SUBRUN_CODE:
        h.update((REPO_ROOT / f).read_bytes())
    return h.hexdigest()


def filed_elsewhere(run: Path, cfg) -> str | None:
    """Why the finished run in ``run`` is not the sub-run ``cfg`` describes (None: it is): its recorded
    ``config.yaml`` names another method, other method options, or another seed."""
    import yaml

    try:
        rec = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        return f"its config.yaml cannot be read ({type(e).__name__})"
    if not isinstance(rec, dict):
        return "its config.yaml is not a mapping"
    want, got = cfg.method or {}, rec.get("method") or {}
    for key in sorted(set(want) | set(got)):
        if key != "plan" and want.get(key) != got.get(key):
            return f"it was run with method.{key}={got.get(key)!r}, this sub-run needs {want.get(key)!r}"
    seed = (rec.get("train") or {}).get("seed")
    if seed is not None and seed != cfg.train.seed:
        return f"it was run with train.seed={seed}, this sub-run needs {cfg.train.seed}"
    return None


class Earlier:
    """Finished sub-runs of the committed results (complete or partial file), reusable on a machine that
    no longer has them when the dense weights and the sub-run's fingerprint match."""

    def __init__(self, results_file: Path, scale: str, dense_sha: str | None, say=print):
        self.records, self.arrays, self.used = {}, {}, []
        for f in (results_file.with_name(results_file.stem + ".partial.json"), results_file):
            try:
                old = json.loads(f.read_text())
                npz = np.load(f.with_suffix(".npz"))
            except (OSError, ValueError):
                continue
            if old.get("scale") != scale or not dense_sha or old.get("dense", {}).get("weights_sha256") != dense_sha:
                continue
            for rec in old.get("runs", []):
                if rec.get("subrun") and rec.get("config_sha256"):
                    prefix = rec.get("prefix")
                    arrays = {k[len(prefix) + 1:]: npz[k] for k in npz.files if prefix and k.startswith(prefix + "/")}
                    self.records[rec["subrun"]] = {**rec, "made_at_commit": rec.get("made_at_commit") or old.get("commit")}
                    self.arrays[rec["subrun"]] = arrays
        self.say = say

    def get(self, name: str, sha: str):
        rec = self.records.get(name)
        if rec is None or rec.get("config_sha256") != sha:
            return None
        self.used.append(name)
        self.say(f"{name}: reused from the committed results (made at commit {rec.get('made_at_commit')})")
        return rec, self.arrays.get(name, {})


def _prefix(variant: str, seed: int) -> str:
    """Array prefix of a dynamic run: the variant name for seed 0 (what the figures read), else -s<k>."""
    return variant if seed == 0 else f"{variant}-s{seed}"


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False) -> dict:
    """Run (or continue) the ManiDP study at ``scale``; writes the results JSON and its arrays (NPZ)."""
    from ..train.trainer import weights_fingerprint

    out, results_file, parts, runs = open_study("manidp", scale, out, results, parts, PARTS, collect=collect,
                                                quiet=quiet)
    prog = runs.progress_override
    t0 = time.time()
    seeds = SETTINGS[scale]["seeds"]
    dense_over = {"train": {"epochs": 30}} if scale == "cpu" else {}
    dcfg = load_config("resnet20" if scale != "paper" else "resnet56", scale, overrides=deep_merge(prog, dense_over))
    dense_dir = runs.get("dense", lambda d: train(dcfg, d, resume=True, quiet=quiet), "dense checkpoint")
    study = {"study": "manidp", "scale": scale, "command": f"prunelab experiment manidp --scale {scale} --out {out}",
             "variants": {}, "runs": [], "parts": list(parts), "seeds": list(seeds)}
    arrays = {}
    if dense_dir is None:
        return _finish(study, runs, parts, results_file, arrays, t0, [])
    dense = read_json(dense_dir / "result.json")
    dense_sha = weights_fingerprint(dense_dir / "model.pt")
    study["dense"] = {"test_acc": dense["final"]["test_acc"], "epochs": dense["epochs"], "weights_sha256": dense_sha}
    arrays["dense_test_ce"] = dense_test_ce(dense_dir, dcfg)
    earlier = Earlier(results_file, scale, dense_sha, runs.say)
    init = {"stages": {"pretrain": {"init_from": str(dense_dir / "model.pt")}}}
    base = load_config("resnet20_manidp", scale, overrides=deep_merge(prog, init))
    spec = models.describe(models.create(base.model.name, **base.model.kwargs))
    layers = [t.name for t in spec.select(("mid", "delta"))]
    study.update({"model": base.model.name, "layers": layers, "channels": [spec.tensor(n).channels for n in layers],
                  "dense_macs": count(spec).macs, "hyperparameters": base.method,
                  "schedule": {"learn": base.stages["learn"]}})
    learn = base.stages["learn"]

    def subrun(name, cfg, make, summarize, label, **fields):
        """The record (and arrays) of sub-run ``name``: finished here, reused from the committed results, or
        trained now; None when missing."""
        sha = config_sha(cfg)
        d = runs.path(name)
        if not runs.done(name):
            got = earlier.get(name, sha)
            if got is not None:
                return got
        d = runs.get(name, make, label)
        if d is None:
            return None
        why = filed_elsewhere(d, cfg)
        if why:  # a run of another setting in this folder: never aggregated under this one's name
            runs.missing.append(f"{label} (refused: {why})")
            runs.say(f"{label}: {d} is refused: {why}; move it away and rerun the study")
            return None
        try:
            rec, arr = summarize(d)
        except Exception as e:  # one damaged sub-run must not stop the study's other sub-runs from being collected
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            runs.missing.append(f"{label} (damaged: {reason})")
            runs.say(f"{label}: {d} is damaged ({reason}); skipped. Rerun it with --force in that folder, or delete it")
            return None
        return {**rec, **fields, "subrun": name, "config_sha256": sha}, arr

    def add(got, prefix=None):
        rec, arr = got
        rec = {**rec, "prefix": prefix}
        study["runs"].append(rec)
        if prefix:
            arrays.update({f"{prefix}/{k}": v for k, v in arr.items()})
        return rec

    dynamic = {}
    if "manidp" in parts:
        for variant, method in VARIANTS.items():
            for seed in (seeds if variant == "with_sim" else seeds[:1]):
                name = f"manidp-{variant}-s{seed}"
                cfg = load_config("resnet20_manidp", scale, overrides=deep_merge(prog, deep_merge(init, {
                    "method": method, "train": {"seed": seed}})))
                got = subrun(name, cfg, lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                             lambda d: summarize_dynamic(d, layers), f"ManiDP {variant} seed {seed}",
                             variant=variant, seed=seed, lambda_sim=method["lambda_sim"])
                if got is None:
                    continue
                rec = add(got, _prefix(variant, seed))
                dynamic[(variant, seed)] = rec
                if seed == seeds[0]:
                    study["variants"][variant] = rec
                runs.say(f"ManiDP {variant} seed {seed}: {100 * rec['final_test_acc']:.2f}% test accuracy, mean test "
                         f"MACs {rec['mean_macs'] / 1e6:.2f} M")

    # the static controls: same checkpoint, epochs, optimiser and schedule as the dynamic runs
    control = {"stages": {"learn": {"enabled": False},
                          "finetune": {"enabled": True, "train": learn.get("train", {}), "optim": learn.get("optim", {}),
                                       "schedule": learn.get("schedule", {})}}}
    if "static" in parts:
        for seed in seeds:
            src = dynamic.get(("with_sim", seed))
            if src is None:
                runs.missing.append(f"static mask seed {seed} (needs ManiDP with_sim seed {seed})")
                continue
            plan = static_plan(spec, layers, src)
            plan_file = out / "plans" / f"static-s{seed}.json"
            if not runs.collect:
                plan_file.parent.mkdir(parents=True, exist_ok=True)
                plan.save(plan_file)
            cfg = dataclasses.replace(load_config("resnet20_l1", scale, overrides=deep_merge(prog, deep_merge(
                deep_merge(init, control), {"method": {"name": "plan", "plan": str(plan_file)}, "train": {"seed": seed}}))),
                budget={})  # the plan is the structure: no budget
            got = subrun(f"static-s{seed}", cfg, lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                         summarize_static, f"static mask seed {seed}", variant="static", seed=seed,
                         source=src["subrun"], plan=plan.to_dict())
            if got is not None:
                rec = add(got)
                runs.say(f"static mask seed {seed}: {100 * rec['final_test_acc']:.2f}% at {rec['mean_macs'] / 1e6:.2f} M")
    if "l1" in parts:
        src = dynamic.get(("with_sim", seeds[0]))
        if src is None:
            runs.missing.append(f"l1 seed {seeds[0]} (needs ManiDP with_sim seed {seeds[0]})")
        else:
            keep = src["mean_macs"] / study["dense_macs"]
            cfg = load_config("resnet20_l1", scale, overrides=deep_merge(prog, deep_merge(deep_merge(init, control), {
                "budget": {"metric": "macs", "keep": round(keep, 6)}, "train": {"seed": seeds[0]}})))
            got = subrun(f"l1-s{seeds[0]}", cfg, lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                         summarize_static, f"l1 seed {seeds[0]}", variant="l1", seed=seeds[0], source=src["subrun"])
            if got is not None:
                rec = add(got)
                runs.say(f"l1 seed {seeds[0]}: {100 * rec['final_test_acc']:.2f}% at {rec['mean_macs'] / 1e6:.2f} M")
    return _finish(study, runs, parts, results_file, arrays, t0, earlier.used)


def _finish(study, runs, parts, results_file, arrays, t0, reused) -> dict:
    seeds = study["seeds"]
    expected = {"manidp": len(seeds) + 1, "static": len(seeds), "l1": 1}
    have = {"manidp": sum(r["kind"] == "dynamic" for r in study["runs"]),
            "static": sum(r.get("variant") == "static" for r in study["runs"]),
            "l1": sum(r.get("variant") == "l1" for r in study["runs"])}
    study["missing"] = runs.missing
    study["reused_subruns"] = list(reused)
    study["complete"] = (not runs.missing and set(parts) == set(PARTS) and "dense" in study
                         and all(have[k] == expected[k] for k in expected))
    study["wall_time_s"] = time.time() - t0
    study["created"] = time.strftime("%Y-%m-%d %H:%M")
    written = write_results(results_file, study, runs.say)
    if arrays:  # beside the JSON it belongs to (a partial study's arrays beside the partial file), whole or not at all
        import io

        from ..utils import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(written.with_suffix(".npz"), buf.getvalue())
    study["arrays_file"] = str(written.with_suffix(".npz"))
    runs.say(f"results written to {written}")
    return study
