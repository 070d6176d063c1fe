"""Iterative pruning: shrink the structure, compact, retrain; repeat from the retrained network.

Each step is its own resumable run directory (``<out>/step<k>``) holding ``compact/`` (plan and
retrained weights), ``metrics.jsonl`` and ``result.json`` (test accuracy before and after retraining).
The retrained compact network is expanded back to a dense one with zeros in the pruned channels
(:func:`prunelab.pruning.compact.expand`), so the next step's ``shrink`` sees every channel.
BAR's iterative random and weight-magnitude baselines (supplement §3.2) are built on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .. import models
from ..config import Config
from ..pruning.compact import compact, expand, load_compact, save_compact
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..train.distributed import DistInfo
from ..train.rundir import RunDir
from ..train.run import build_loaders, setup_runtime
from ..train.trainer import Trainer, evaluate, load_weights
from ..utils import read_json, write_json
from .subruns import is_done

Shrink = Callable[[Structure, object, "object", np.random.Generator], Structure]


def iterative_prune(cfg: Config, out, *, init_from, steps: int, shrink: Shrink, stage: str = "step",
                    stage_names=None, seed: int = 0, collect: bool = False, hooks=(), say=print) -> list[dict]:
    """Run (or continue) ``steps`` rounds of ``shrink`` + retraining with ``cfg``'s schedule.

    Args:
        cfg: the retraining config (model, data, optimiser, schedule, epochs per step).
        out: folder of the step run directories.
        init_from: weights of the dense network the first step starts from.
        shrink: ``shrink(structure, spec, dense_net, rng) -> structure`` chooses the next structure
            (called every step, finished or not, so that its random draws do not depend on where a
            run was interrupted).
        stage: prefix of each step's stage name in the metrics log (``<stage><k>``), unless
            ``stage_names`` gives one name per step.
        collect: stop at the first unfinished step instead of training it.
        hooks: trainer hooks added to every retraining (e.g. a
            :class:`~prunelab.train.distill.Distillation` from a teacher, as BAR's own fine-tuning uses).

    Returns one record per finished step: ``step``, ``structure``, ``accuracy``,
    ``accuracy_before_finetune``, ``metrics``.
    """
    out = Path(out)
    device = setup_runtime(cfg, DistInfo())
    dense = models.create(cfg.model.name, **cfg.model.kwargs)
    load_weights(dense, init_from)
    spec = models.describe(dense)
    structure = Structure.full(spec, model_kwargs=cfg.model.kwargs)
    rng = np.random.default_rng(seed)
    tl, ev = build_loaders(cfg.data, device, seed=cfg.train.seed)
    names = list(stage_names) if stage_names is not None else [f"{stage}{k}" for k in range(1, steps + 1)]
    rows = []
    for step in range(1, steps + 1):
        d = out / f"step{step}"
        structure = shrink(structure, spec, dense, rng)
        if not is_done(d) and collect:
            break
        if is_done(d):
            pruned = load_compact(d / "compact")
            structure = Structure.load(d / "compact" / "plan.json")
        else:
            pruned = compact(dense, structure)
            before = evaluate(pruned.to(device), ev["test"])["acc"]
            with RunDir(d, resume=True) as run:
                Trainer(pruned, tl, ev, train_cfg=cfg.train, optim_cfg=cfg.optim, schedule_cfg=cfg.schedule, run=run,
                        hooks=list(hooks), device=device, stage=names[step - 1]).fit(resume=run.resumed)
                save_compact(pruned, structure, d / "compact")
                acc = evaluate(pruned, ev["test"])["acc"]
                write_json(d / "result.json", {"final_test_acc": acc, "pruned_test_acc_before_finetune": before})
        res = read_json(d / "result.json")
        rows.append({"step": step, "structure": structure, "accuracy": res["final_test_acc"],
                     "accuracy_before_finetune": res["pruned_test_acc_before_finetune"], "metrics": read_metrics(d)})
        say(f"{stage} step {step}: accuracy before retraining {100 * rows[-1]['accuracy_before_finetune']:.2f}%, "
            f"after {100 * rows[-1]['accuracy']:.2f}%")
        dense = expand(pruned.cpu(), structure)
    return rows
