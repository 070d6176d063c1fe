"""Iterative pruning: shrink the structure, compact, retrain; repeat from the retrained network.

Each step is its own resumable run directory (``<out>/step<k>``) holding ``compact/`` (plan and
retrained weights), ``metrics.jsonl`` and ``result.json`` (test accuracy before and after retraining).
The retrained compact network is expanded back to a dense one with zeros in the pruned channels
(:func:`prunelab.pruning.compact.expand`), so the next step's ``shrink`` sees every channel.
BAR's iterative baselines (supplement §3.2: Random, WM, VQ, ID) are built on it: their shrink rules are
the named entries of :data:`SHRINK_RULES`, and :func:`run_iterative` runs one whole chain of steps as one
sub-run of a study (the ``iterative`` task kind of :mod:`prunelab.experiments.tasks`). VQ and ID also
rewrite the next layer before each compaction (:class:`ReconstructingShrink`; docs/decisions.md L29).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch

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
    scoring = None
    if getattr(shrink, "needs_data", False):  # activations of training images, without augmentation (L26)
        scoring, _ = build_loaders(dataclasses.replace(cfg.data, augment=False), device, seed=cfg.train.seed)
    names = list(stage_names) if stage_names is not None else [f"{stage}{k}" for k in range(1, steps + 1)]
    rows = []
    for step in range(1, steps + 1):
        d = out / f"step{step}"
        # a rule that draws from rng is called on finished steps too, so its draws do not depend on where a
        # run was interrupted; a deterministic one is skipped there (its structure is read back below)
        if not (is_done(d) and getattr(shrink, "rng_free", False)):
            structure = shrink(structure, spec, dense, rng, **({"data": scoring} if scoring is not None else {}))
        if not is_done(d) and collect:
            break
        if is_done(d):
            pruned = load_compact(d / "compact")
            structure = Structure.load(d / "compact" / "plan.json")
        else:
            source = shrink.reconstructed(dense, spec, structure) if hasattr(shrink, "reconstructed") else dense
            pruned = compact(source, structure)
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


# ---------------------------------------------------------------------------------------------------
# shrink rules (BAR's iterative baselines)


def halve(structure: Structure, spec, scores: dict | None, rng: np.random.Generator) -> Structure:
    """Keep half (``len(alive) // 2``, at least 1) of the alive channels of every gated tensor; the
    contributors of a residual trunk share one mask (L6). ``scores`` None: a uniform draw without
    replacement from ``rng``; otherwise the channels with the largest score, summed over a trunk's
    contributors (ties: the lower index first)."""
    new = {}
    trunk_of = {n: tid for tid, members in spec.trunks().items() for n in members}
    groups: dict = {}
    for t in spec.tensors:
        groups.setdefault(trunk_of.get(t.name, t.name), []).append(t.name)
    for key, members in groups.items():
        alive = structure.alive[members[0]]
        n = max(1, len(alive) // 2)
        if scores is None:
            keep = rng.choice(alive, n, replace=False)
        else:
            s = np.sum([scores[m][alive] for m in members], axis=0)
            keep = alive[np.lexsort((alive, -s))[:n]]
        for m in members:
            new[m] = np.sort(keep)
    return structure.with_alive(new)


def shrink_random(structure: Structure, spec, dense, rng: np.random.Generator) -> Structure:
    """Iterative random pruning (BAR supplement §3.2, "Random"): keep a uniformly random half of the
    alive channels of every gated tensor (one draw per residual trunk, shared by its contributors),
    drawn from ``rng`` (the chain's seeded generator). ``dense`` is not looked at."""
    return halve(structure, spec, None, rng)


def shrink_wm(structure: Structure, spec, dense, rng: np.random.Generator) -> Structure:
    """Iterative weight-magnitude pruning (BAR supplement §3.2, "WM"; the criterion of Li et al. 2017):
    keep the half of the alive channels of every gated tensor whose filters in ``dense`` have the
    largest L1 norm (:func:`prunelab.methods.l1.l1_scores`, raw norms; a residual trunk ranks by the sum
    of its contributors' norms; ties: the lower index). ``rng`` is not drawn from."""
    from ..methods.l1 import l1_scores

    return halve(structure, spec, l1_scores(dense, spec), rng)


shrink_wm.rng_free = True


class ReconstructingShrink:
    """A shrink rule that also rewrites the next layer (BAR's VQ and ID baselines under its iterative scheme,
    supplement §3.2; docs/decisions.md L29).

    Each call halves every gated tensor as :func:`halve` does. A tensor that one conv alone reads (outside
    any residual trunk: :func:`~prunelab.methods.vq.read_by_one_conv`, the block middles) is halved by the
    method's own choice among its alive channels (:meth:`choose`), and :meth:`reconstructed` then gives a
    copy of the network whose reading conv absorbs the reconstruction of every alive channel from the
    kept ones, before :func:`~prunelab.pruning.compact.compact` removes the others. A tensor read by
    several ops or added into a trunk cannot be reconstructed by one next layer; it is halved by WM's
    rule (the L1 criterion, trunk contributors ranked by their summed norms and sharing one mask, L6)."""

    rng_free = True  # deterministic given the network (and, for ID, the first training batches)
    needs_data = False

    def __init__(self):
        self._merges: dict = {}

    def choose(self, net, spec, name: str, alive: np.ndarray, n: int, data) -> tuple[np.ndarray, Callable]:
        """``(kept channels, merge)`` for tensor ``name``: ``n`` of its ``alive`` channels, and ``merge(W)``
        the reading conv's new weight (same shape; only the kept columns matter)."""
        raise NotImplementedError

    def prepare(self, net, spec, tensors: list, data) -> None:
        """Computed once per step before :meth:`choose` (ID: the Gram matrices of the step's network)."""

    def __call__(self, structure: Structure, spec, dense, rng: np.random.Generator, data=None) -> Structure:
        from ..methods.l1 import l1_scores
        from ..methods.vq import read_by_one_conv

        halved = halve(structure, spec, l1_scores(dense, spec), rng)
        alone = [t for t in spec.tensors if t.name in structure.alive and read_by_one_conv(spec, t)]
        self.prepare(dense, spec, alone, data)
        new, self._merges = {}, {}
        for t in alone:
            alive = np.asarray(structure.alive[t.name])
            keep, merge = self.choose(dense, spec, t.name, alive, max(1, len(alive) // 2), data)
            new[t.name] = np.sort(np.asarray(keep))
            self._merges[t.name] = merge
        return halved.with_alive(new)

    def reconstructed(self, dense, spec, structure: Structure):
        """A copy of ``dense`` whose convs reading the tensors chosen by the last call hold their merged
        weights (``structure``: what that call returned)."""
        out = copy.deepcopy(dense)
        with torch.no_grad():
            for name, merge in self._merges.items():
                (op,) = [o for o in spec.ops if name in o.reads]
                conv = out.get_submodule(op.name)
                conv.weight.copy_(merge(conv.weight.detach().double()).to(conv.weight.dtype))
        return out


class ShrinkVQ(ReconstructingShrink):
    """VQ under the iterative scheme (:mod:`prunelab.methods.vq`): k-means (seed 0) of the alive channels'
    BN-folded filters into half as many clusters, one representative per cluster kept, the reading conv's
    input weights of each cluster summed onto its representative."""

    def choose(self, net, spec, name, alive, n, data):
        from ..methods.vq import folded_filters, kmeans, representatives

        f = folded_filters(net, spec, name)[alive]
        labels, centres = kmeans(f, n, 0)
        rep_of = alive[representatives(f, labels, centres)]  # the representative of each alive channel

        def merge(w):
            new = w.clone()
            new[:, alive] = 0
            new.index_add_(1, torch.as_tensor(rep_of, dtype=torch.long), w[:, alive])
            return new

        return np.unique(rep_of), merge


class ShrinkID(ReconstructingShrink):
    """ID under the iterative scheme (:mod:`prunelab.methods.interp_decomp`): the Gram matrix of the alive
    channels' activations (ReLU of the gated output, the first 5 training batches, no augmentation), its
    column-pivoted QR's first half of pivots kept as the skeleton, the reading conv's kept input weights
    absorbing the interpolation matrix."""

    needs_data = True

    def prepare(self, net, spec, tensors, data):
        from ..methods import create

        self._grams = {}
        if tensors:
            method = create("id", slots=sorted({t.slot for t in tensors}))
            self._grams = method.collect(net, data, spec)

    def choose(self, net, spec, name, alive, n, data):
        from ..methods.interp_decomp import interpolation_matrix, pivoted_qr

        gram = self._grams[name][np.ix_(alive, alive)]
        piv, _ = pivoted_qr(gram)
        local = piv[:n]
        t = torch.from_numpy(interpolation_matrix(gram, local))  # n x |alive|

        def merge(w):
            new = w.clone()
            new[:, alive] = 0
            new[:, alive[local]] = torch.einsum("oc...,sc->os...", w[:, alive], t.to(w.dtype))
            return new

        return alive[local], merge


# a function, or a class whose instances are rules (they keep what a call chose for :meth:`reconstructed`)
SHRINK_RULES: dict[str, Shrink | type] = {"random": shrink_random, "wm": shrink_wm, "vq": ShrinkVQ, "id": ShrinkID}


def shrink_rule(name: str) -> Shrink:
    """The registered shrink rule ``name`` (:data:`SHRINK_RULES`; a class is instantiated: a fresh rule)."""
    from ..errors import UnknownNameError

    if name not in SHRINK_RULES:
        raise UnknownNameError("shrink rule", name, SHRINK_RULES)
    rule = SHRINK_RULES[name]
    return rule() if isinstance(rule, type) else rule


# ---------------------------------------------------------------------------------------------------
# a whole chain as one run directory (a study's sub-run)


def run_iterative(cfg: Config, out, options: dict, *, quiet: bool = True) -> dict:
    """Run (or continue) a chain of :func:`iterative_prune` steps in ``out`` as one run directory:
    ``config.yaml`` (the retraining config), the step folders, and, once every step is finished,
    ``result.json`` (each step's test accuracy before and after retraining). Holds ``out``'s lock while it
    runs (a second process gets :class:`~prunelab.errors.RunDirBusyError`).

    ``options`` (JSON-able; the ``options`` of an ``iterative`` task):

    * ``shrink``: a name in :data:`SHRINK_RULES`; ``steps``: how many rounds;
    * ``init_from``: the dense weights the first step starts from;
    * ``teacher`` (optional): weights to distil from in every retraining, with ``kd_temperature`` and
      ``kd_alpha`` (a :class:`~prunelab.train.distill.Distillation` hook); none: no distillation;
    * ``stage`` / ``stage_names``: the steps' stage names in the metrics logs; ``seed``: the shrink
      rule's random generator (default 0).

    Returns the ``result.json`` record."""
    from ..config import dump_yaml
    from ..utils import atomic_write_text

    out = Path(out)
    shrink = shrink_rule(options["shrink"])
    steps = int(options["steps"])
    hooks = []
    if options.get("teacher"):
        from ..train.distill import Distillation

        teacher = models.create(cfg.model.name, **cfg.model.kwargs)
        load_weights(teacher, options["teacher"])
        hooks = [Distillation(teacher, options["kd_temperature"], options["kd_alpha"])]
    if not (out / "config.yaml").exists():  # first: a folder of step runs is then a run folder to resume
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    with RunDir(out, resume=True):
        rows = iterative_prune(cfg, out, init_from=options["init_from"], steps=steps, shrink=shrink,
                               stage=options.get("stage", "step"), stage_names=options.get("stage_names"),
                               seed=int(options.get("seed", 0)), hooks=hooks,
                               say=(lambda *a: None) if quiet else print)
        res = {"shrink": options["shrink"], "distilled": bool(options.get("teacher")),
               "steps": [{"step": r["step"], "final_test_acc": r["accuracy"],
                          "pruned_test_acc_before_finetune": r["accuracy_before_finetune"]} for r in rows],
               "final_test_acc": rows[-1]["accuracy"]}
        write_json(out / "result.json", res)
    return res


def read_steps(out, steps: int | None = None) -> list[dict]:
    """The finished steps of a chain in ``out`` (in order, stopping at the first unfinished one; at most
    ``steps``), read from their folders only, as :func:`iterative_prune` returns them: ``step``,
    ``structure``, ``accuracy``, ``accuracy_before_finetune``, ``metrics``."""
    out, rows, step = Path(out), [], 1
    while (steps is None or step <= steps) and is_done(out / f"step{step}"):
        d = out / f"step{step}"
        res = read_json(d / "result.json")
        rows.append({"step": step, "structure": Structure.load(d / "compact" / "plan.json"),
                     "accuracy": res["final_test_acc"], "accuracy_before_finetune": res["pruned_test_acc_before_finetune"],
                     "metrics": read_metrics(d)})
        step += 1
    return rows
