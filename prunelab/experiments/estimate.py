"""``prunelab experiment NAME|all --scale paper --dry-run``: every sub-run of a study with its epochs and an
ESTIMATE of its GPU-hours, and the totals.

How the estimate is made (printed with the table):

* images per sub-run = its training epochs (:func:`~.runner.stage_epochs`) x the training images of its
  config (50,000 CIFAR-10 images, or ``train_per_class`` x 10 when set, less a held-out part);
* speed = a dense training step of the sub-run's model timed here (synthetic CIFAR-sized batches of 128,
  one warm-up and three timed steps, float32, on this machine's CPU threads), times
  :data:`ASSUMED_GPU_SPEEDUP` (a GPU measurement replaces it: ``bench/paper_throughput.py`` on the GPU
  prints img/s per config; set ``PRUNELAB_GPU_IMAGES_PER_S`` to ``model=img/s,...`` to use them);
* not counted: evaluation, method overheads (ManiDP, DDNP and BAR steps cost 1.1-1.5x a dense step on
  CPU), checkpoints, data loading.

Studies not yet on the runner are listed by name with the reason.
"""

from __future__ import annotations

import os
import time

# An H100 with AMP and channels-last trains CIFAR ResNets roughly 30x faster than this 2-core CPU in
# float32 (ResNet-20: ~690 img/s here): an assumption, not a measurement, until bench/gpu_check.sh has run
ASSUMED_GPU_SPEEDUP = 30.0


def train_images(cfg) -> int:
    """Training images per epoch of ``cfg`` (CIFAR-10: 50,000, or train_per_class x 10, less the holdout)."""
    d = cfg.data
    n = 10 * d.train_per_class if d.train_per_class else 50_000
    if d.holdout and not d.train_on_holdout:
        n -= d.holdout
    elif d.holdout and d.train_on_holdout:
        n = d.holdout
    return max(0, int(n))


def cpu_images_per_s(model: str, kwargs: dict, batch: int = 128, steps: int = 3) -> float:
    """Dense training throughput of ``model`` on this CPU: synthetic 32x32 batches, SGD, float32."""
    import torch

    from .. import models

    net = models.create(model, **kwargs).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    t = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i:
            t += time.perf_counter() - t0
    return batch * steps / t


def _gpu_overrides() -> dict:
    env = os.environ.get("PRUNELAB_GPU_IMAGES_PER_S", "")
    out = {}
    for item in filter(None, (s.strip() for s in env.split(","))):
        k, _, v = item.partition("=")
        out[k.strip()] = float(v)
    return out


def dry_run_rows(name: str, scale: str = "paper", parts=None, say=print) -> list[dict]:
    """One row per sub-run of study ``name`` (``all``: every study on the runner): study, sub-run, model,
    epochs, images and estimated GPU-hours."""
    import tempfile

    from .runner import STUDIES, Runner, _import_studies, stage_epochs

    _import_studies()
    names = sorted(STUDIES) if name == "all" else [name]
    speed, measured = _gpu_overrides(), {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for study in names:
            r = Runner(study, scale, os.path.join(tmp, study), parts=parts if name != "all" else None,
                       results=os.path.join(tmp, f"{study}.json"), quiet=True)
            for st in r.configs():
                cfg = st.config
                if cfg is None:
                    rows.append({"study": study, "subrun": st.sub.name, "model": "?", "epochs": st.sub.epochs,
                                 "images": None, "gpu_hours": None, "note": st.note})
                    continue
                kw = cfg.model.kwargs or {}
                key = cfg.model.name + (f"({','.join(f'{k}={v}' for k, v in sorted(kw.items()))})" if kw else "")
                if key not in speed and key not in measured:
                    measured[key] = cpu_images_per_s(cfg.model.name, dict(cfg.model.kwargs or {})) * ASSUMED_GPU_SPEEDUP
                ips = speed.get(key, measured.get(key))
                epochs = stage_epochs(cfg, st.sub.kind, getattr(st, "options", None))
                images = epochs * train_images(cfg)
                rows.append({"study": study, "subrun": st.sub.name, "model": key, "epochs": epochs, "images": images,
                             "gpu_hours": images / ips / 3600, "note": ""})
    return rows


def dry_run_table(name: str, scale: str = "paper", parts=None) -> str:
    """The ``--dry-run`` table: every sub-run, per-study totals and the grand total of estimated GPU-hours."""
    from .runner import STUDIES, _import_studies

    _import_studies()
    rows = dry_run_rows(name, scale, parts)
    lines = [f"{'study':8s} {'sub-run':44s} {'model':28s} {'epochs':>6s} {'images':>12s} {'GPU-h (est.)':>12s}"]
    totals = {}
    for r in rows:
        h = r["gpu_hours"]
        totals[r["study"]] = totals.get(r["study"], 0.0) + (h or 0.0)
        lines.append(f"{r['study']:8s} {r['subrun']:44s} {r['model'][:28]:28s} {str(r['epochs']):>6s} "
                     f"{(format(r['images'], ',') if r['images'] is not None else '?'):>12s} "
                     f"{(f'{h:.2f}' if h is not None else '?'):>12s}" + (f"  ({r['note']})" if r["note"] else ""))
    lines.append("")
    for s, h in totals.items():
        lines.append(f"{s}: {sum(1 for r in rows if r['study'] == s)} sub-runs, {h:.1f} GPU-hours (estimate)")
    lines.append(f"total: {len(rows)} sub-runs, {sum(totals.values()):.1f} GPU-hours (estimate)")
    from . import experiments

    off = sorted(set(experiments()) - set(STUDIES)) if name == "all" else []
    if off:
        lines.append(f"not on the study runner yet (not estimated): {', '.join(off)}")
    src = ("measured on the GPU (PRUNELAB_GPU_IMAGES_PER_S)" if _gpu_overrides() else
           f"ESTIMATE: dense training steps timed on this CPU x {ASSUMED_GPU_SPEEDUP:g} (assumed GPU speed-up); "
           "evaluation and method overheads not counted")
    lines.append(f"speed: {src}")
    return "\n".join(lines)
