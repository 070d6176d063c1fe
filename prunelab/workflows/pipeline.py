"""The pruning pipeline: pretrain -> learn structure -> prune to the budget -> fine-tune.

Each stage is optional and configured under ``stages:`` (see :func:`.stages.stage_config`)::

    method: {name: l1}
    budget: {metric: macs, keep: 0.5}
    stages:
      pretrain: {init_from: runs/resnet20-30ep/model.pt}     # or {train: {epochs: 30}} to train here
      learn:    {train: {epochs: 10}}                          # methods that learn (slimming, lzr, bar, pfs)
      finetune: {train: {epochs: 5}, optim: {lr: 0.02}}        # {enabled: false} to skip
                                                               # {reinit: true}: train from scratch (PFS)
                                                               # {kd: true}: distil from the dense network
                                                               # (or {kd: {teacher: PATH, temperature, alpha}})

Each stage takes only the keys it reads (:data:`.stages.STAGE_KEYS`, typed), and a budget given to a
method that sets its own cost is refused (:data:`OWN_COST`): nothing in the config is silently ignored.

The run directory holds ``pipeline.json`` (finished stages), ``checkpoint-<stage>.pt`` (resumable),
``learn.pt`` (the learned gates and the method's state), ``pruned/`` (the method's result before
fine-tuning), ``structure.json`` (the plan, static results), ``compact/`` (static) or ``final/``
(dynamic, generated: the fine-tuned result) and ``result.json``. A killed pipeline continues with
``--resume`` from the stage (and step) where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import methods, models
from ..config import Config, dump_yaml, scale_caveat
from ..counting import count
from ..errors import ConfigError
from ..pruning.budget import Budget
from ..train.distributed import init_from_env
from ..train.rundir import RunDir
from ..train.run import check_resume_config, default_out, environment, preflight, setup_runtime
from ..utils import write_json
from . import stages as st


def _dense_cost(spec) -> dict:
    out = {}
    for residual in ("mixed", "regular"):
        c = count(spec, residual=residual)
        out[residual] = {"macs": c.macs, "flops": c.flops, "params": c.params, "volume": c.volume}
    out["convention"] = count(spec).convention
    return out


# methods whose cost an option of their own sets: a budget given to them would be ignored, so it is
# refused (ddnp, which reaches its p by training, refuses a budget that disagrees with p itself)
OWN_COST = {"manidp": ("method.remain", "the final remain rate r*"), "plan": ("method.plan", "the plan's structure")}


def check_budget_is_read(cfg: Config) -> None:
    """Refuse a ``budget:`` for a method that sets its cost by an option of its own (:data:`OWN_COST`)."""
    name = (cfg.method or {}).get("name")
    if cfg.budget and name in OWN_COST:
        key, what = OWN_COST[name]
        raise ConfigError(f"method {name} ignores budget: its cost is set by {key} ({what}); remove the budget "
                          f"(the config's budget: section, or --set budget.*) and set {key} instead")


def check_data_reading_method_has_its_stage(cfg: Config) -> None:
    """A method that only reads training data in the learn stage (``learn_trains = False``: hrank, chip, id)
    needs that stage: refused here, before pretraining, rather than at selection after it."""
    from .. import methods

    name = (cfg.method or {}).get("name")
    if not name:
        return
    m = methods.get(name)
    if m.learns and not m.learn_trains and st.stage_config(cfg, "learn") is None:
        from ..config import find_config

        try:
            bundled = f" (as the bundled resnet20_{name} config does)" if find_config(f"resnet20_{name}") else ""
        except ConfigError:
            bundled = ""
        raise ConfigError(f"method {name} reads training images in the learn stage (it trains nothing there), "
                          f"which this config does not run; add --set stages.learn.enabled=true{bundled}")


def preflight_pipeline(cfg: Config, dist_info) -> None:
    """Everything the stages will need, checked before a run directory exists: each stage's config,
    the weights the run starts from and a distillation teacher (loaded and matched against the model)."""
    from ..train.run import check_weights

    st.check_stages(cfg)
    check_budget_is_read(cfg)
    check_data_reading_method_has_its_stage(cfg)
    preflight(cfg, dist_info)
    for name in st.STAGES:
        c = st.stage_config(cfg, name)
        if c is not None:
            preflight(c, dist_info, weights=False)  # the same init weights: checked once, above
    init = st.stage_options(cfg, "pretrain").get("init_from")
    if init:
        check_weights(init, cfg, "stages.pretrain.init_from")
    kd = st.stage_options(cfg, "finetune").get("kd")
    if isinstance(kd, dict) and kd["teacher"]:
        check_weights(kd["teacher"], cfg, "stages.finetune.kd.teacher")


def run_pipeline(cfg: Config, out=None, *, resume: bool = False, force: bool = False, quiet: bool = False) -> dict:
    """Run (or continue) a pruning pipeline; returns the result record also written to ``result.json``.

    The method is made (and its options checked) and every stage's settings and weights are checked
    before anything is trained or written.
    """
    method = methods.from_config(cfg.method)
    budget = Budget.parse(cfg.budget) if cfg.budget else None
    dist_info = init_from_env()
    preflight_pipeline(cfg, dist_info)
    method.check(models.describe(models.create(cfg.model.name, **cfg.model.kwargs)), budget)
    out = Path(out) if out else default_out(cfg)
    run = RunDir(out, resume=resume, force=force, rank=dist_info.rank, quiet=quiet)
    t_start = time.time()
    try:
        check_resume_config(run, cfg)
        run.write_text("config.yaml", dump_yaml(cfg))
        ctx = st.StageContext(cfg, run, setup_runtime(cfg, dist_info), dist_info, method, budget, st.StageLog(run),
                              say=(lambda *a: None) if quiet else print)
        ctx.record.update({"name": cfg.name, "scale": cfg.scale, "method": cfg.method, "model": cfg.model.name,
                           "model_kwargs": cfg.model.kwargs, "budget": budget.__dict__ if budget else None})
        st.pretrain(ctx)
        ctx.record["dense_cost"] = _dense_cost(ctx.spec)
        st.learn(ctx)
        result = st.prune(ctx)
        st.finetune(ctx, result)
        r = ctx.record
        r["wall_time_s"] = time.time() - t_start
        r["environment"] = environment()
        dense, pr = r["dense_cost"]["mixed"]["macs"], r["final_cost"]["mixed"]["macs"]
        mean = " (mean over test images)" if result.kind == "dynamic" else ""
        r["summary"] = (f"{cfg.name} ({cfg.scale}, {method.name}): {pr / 1e6:.2f}/{dense / 1e6:.2f} M MACs{mean} "
                        f"({100 * pr / dense:.1f}%), test accuracy dense {100 * r['dense_test_acc']:.2f}% -> "
                        + (f"learned {100 * r['learned_test_acc']:.2f}% -> " if "learned_test_acc" in r else "")
                        + f"pruned "
                        f"{100 * r['pruned_test_acc_before_finetune']:.2f}% -> "
                        + (f"extracted {100 * r['extracted_test_acc']:.2f}% -> " if "extracted_test_acc" in r else "")
                        + f"fine-tuned {100 * r['final_test_acc']:.2f}%" + scale_caveat(cfg.scale))
        if dist_info.is_main:
            write_json(run.file("result.json"), r)
        return r
    finally:
        run.close()
