"""Reading run directories: summaries for ``prunelab info`` and re-evaluation for ``prunelab eval``."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import RunDirError
from ..train.rundir import read_metrics, summed_epoch_time
from ..utils import read_json


def _check(path) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.yaml").exists():
        raise RunDirError(f"{p} is not a prunelab run directory (no config.yaml); pass the folder given to --out")
    return p


def run_info(path) -> str:
    """A human-readable summary: what ran, how far it got, and its results."""
    p = _check(path)
    cfg = yaml.safe_load((p / "config.yaml").read_text())
    lines = [f"run {p}", f"  name {cfg.get('name')} | scale {cfg.get('scale')} | model {cfg['model']['name']} "
             f"{cfg['model'].get('kwargs') or ''}"]
    if cfg.get("method"):
        lines.append(f"  method {cfg['method']} | budget {cfg.get('budget')}")
    metrics = read_metrics(p)
    stages: dict = {}
    for m in metrics:
        stages.setdefault(m.get("stage") or "train", []).append(m)
    for stage, rows in stages.items():
        last = rows[-1]
        acc = f", test {100 * last['test_acc']:.2f}%" if "test_acc" in last else ""
        lines.append(f"  {stage}: {len(rows)} epoch(s) logged, last train loss {last['train_loss']:.3f}{acc}")
    if (p / "pipeline.json").exists():
        lines.append(f"  finished stages: {', '.join(read_json(p / 'pipeline.json')['done'])}")
    if (p / "result.json").exists():
        r = read_json(p / "result.json")
        if "summary" in r:
            lines.append(f"  result: {r['summary']}")
        elif "final" in r:
            # older result files lack train_time_s; the metrics log has every epoch's time
            train_s = r.get("train_time_s", summed_epoch_time(metrics))
            lines.append(f"  result: test accuracy {100 * r['final'].get('test_acc', float('nan')):.2f}%, "
                         f"{r['macs'] / 1e6:.2f} M MACs, {train_s / 60:.1f} min of epochs "
                         f"({r['wall_time_s'] / 60:.1f} min in the last process)")
    else:
        ck = sorted(q.name for q in p.glob("checkpoint*.pt"))
        lines.append(f"  not finished{'; resumable from ' + ', '.join(ck) if ck else ''} (prunelab ... --resume)")
    return "\n".join(lines)


def evaluate_run(path) -> dict:
    """Test accuracy of a run's final model (dense ``model.pt`` or a pruning run's ``compact/``)."""
    import torch

    from .. import models
    from ..config import build
    from ..counting import count
    from ..pruning.compact import load_compact
    from ..pruning.structure import Structure
    from ..train.run import build_loaders
    from ..train.trainer import evaluate, load_weights, resolve_device

    p = _check(path)
    cfg = build(yaml.safe_load((p / "config.yaml").read_text()))
    device = resolve_device("auto")
    if (p / "compact" / "plan.json").exists():
        model = load_compact(p / "compact", map_location=device)
        structure = Structure.load(p / "compact" / "plan.json")
        spec = models.describe(models.create(structure.model, **structure.model_kwargs))
        macs = count(spec, structure).macs
    elif (p / "model.pt").exists():
        model = models.create(cfg.model.name, **cfg.model.kwargs)
        load_weights(model, p / "model.pt")
        macs = count(model).macs
    else:
        raise RunDirError(f"{p} has no final model yet (model.pt or compact/); finish it with --resume")
    mf = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=mf)
    _, ev = build_loaders(cfg.data, device, seed=cfg.train.seed, channels_last=cfg.train.channels_last)
    r = evaluate(model, ev["test"])
    return {**r, "macs": macs}
