"""The pruning pipeline: pretrain -> learn structure -> hard-prune to the budget -> fine-tune.

Each stage is optional and configured under ``stages:``; a stage's ``train``/``optim``/``schedule``/
``data`` entries override the top-level sections for that stage only::

    method: {name: l1}
    budget: {metric: macs, keep: 0.5}
    stages:
      pretrain: {init_from: runs/resnet20-30ep/model.pt}     # or {train: {epochs: 30}} to train here
      learn:    {train: {epochs: 10}}                          # methods that learn (slimming, lzr, bar, pfs)
      finetune: {train: {epochs: 5}, optim: {lr: 0.02}}        # {enabled: false} to skip
                                                               # {reinit: true}: train from scratch (PFS)

The run directory holds ``structure.json`` (the plan), ``pipeline.json`` (finished stages),
``checkpoint-<stage>.pt`` (resumable), ``compact/`` (plan + fine-tuned weights) and ``result.json``.
A killed pipeline continues with ``--resume`` from the stage (and step) where it stopped.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from .. import methods, models
from ..config import Config, build, deep_merge, dump_yaml
from ..counting import count
from ..errors import ConfigError
from ..train.rundir import RunDir, read_metrics
from ..train.run import build_loaders, check_resume_config, default_out, environment, setup_runtime
from ..train.distributed import init_from_env
from ..train.trainer import Trainer, evaluate, load_weights, weights_payload
from ..utils import read_json, write_json
from .budget import Budget
from .compact import compact, load_compact, save_compact
from .gates import GatedModel, strip_gates
from .structure import Structure

STAGES = ("pretrain", "learn", "prune", "finetune")
STAGE_KEYS = {"train", "optim", "schedule", "data", "enabled", "init_from", "reinit", "kd"}


def stage_config(cfg: Config, stage: str) -> Config | None:
    """The config a stage trains with (None when the stage is disabled or has nothing to train)."""
    st = (cfg.stages or {}).get(stage)
    if st is None:
        return None
    if not isinstance(st, dict):
        raise ConfigError(f"stages.{stage} must be a mapping")
    bad = set(st) - STAGE_KEYS
    if bad:
        raise ConfigError(f"unknown key(s) {sorted(bad)} in stages.{stage}; valid: {', '.join(sorted(STAGE_KEYS))}")
    if st.get("enabled") is False:
        return None
    base = cfg.to_dict()
    merged = deep_merge(base, {k: st[k] for k in ("train", "optim", "schedule", "data") if k in st})
    merged["stages"] = {}
    return build(merged)


def _cost_record(spec, structure=None) -> dict:
    out = {}
    for residual in ("mixed", "regular"):
        c = count(spec, structure, residual=residual)
        out[residual] = {"macs": c.macs, "flops": c.flops, "params": c.params, "volume": c.volume}
    out["convention"] = count(spec, structure).convention
    return out


def _reinit(model: torch.nn.Module, seed: int) -> None:
    """Fresh weights for a pruned network trained from scratch (PFS's Scratch-B)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, torch.nn.Linear):
            m.reset_parameters()


class _State:
    def __init__(self, run: RunDir):
        self.run = run
        p = run.file("pipeline.json")
        self.data = read_json(p) if run.resumed and p.exists() else {"done": []}

    def done(self, stage) -> bool:
        return stage in self.data["done"]

    def mark(self, stage, **info):
        self.data["done"].append(stage)
        self.data[stage] = info
        write_json(self.run.file("pipeline.json"), self.data)


def run_pipeline(cfg: Config, out=None, *, resume: bool = False, force: bool = False, quiet: bool = False) -> dict:
    """Run (or continue) a pruning pipeline; returns the result record also written to ``result.json``."""
    method = methods.from_config(cfg.method)
    budget = Budget.parse(cfg.budget) if cfg.budget else None
    for st in cfg.stages or {}:
        if st not in STAGES:
            raise ConfigError(f"unknown stage {st!r}; stages are {', '.join(STAGES)}")
    dist_info = init_from_env()
    out = Path(out) if out else default_out(cfg)
    run = RunDir(out, resume=resume, force=force, rank=dist_info.rank, quiet=quiet)
    t_start = time.time()
    try:
        check_resume_config(run, cfg)
        run.write_text("config.yaml", dump_yaml(cfg))
        state = _State(run)
        device = setup_runtime(cfg, dist_info)
        say = (lambda *a: None) if quiet else print

        def loaders(c: Config):
            return build_loaders(c.data, device, seed=c.train.seed, channels_last=c.train.channels_last,
                                 dist_info=dist_info)

        net = models.create(cfg.model.name, **cfg.model.kwargs)
        spec = models.describe(net)
        result = {"name": cfg.name, "scale": cfg.scale, "method": cfg.method, "model": cfg.model.name,
                  "model_kwargs": cfg.model.kwargs, "budget": budget.__dict__ if budget else None,
                  "dense_cost": _cost_record(spec)}

        # 1. pretrain ----------------------------------------------------------------------------
        pre = (cfg.stages or {}).get("pretrain") or {}
        init = pre.get("init_from") or cfg.train.init_from
        if state.done("pretrain"):
            # a pretrain stage trained here saved pretrain.pt; one initialised from a checkpoint recorded it
            recorded = state.data["pretrain"].get("init_from")
            if run.file("pretrain.pt").exists() or not recorded:
                load_weights(net, run.file("pretrain.pt"))
            else:
                if not Path(recorded).exists():
                    raise ConfigError(f"cannot resume {out}: its pretrain stage started from {recorded}, which no "
                                      f"longer exists; restore that checkpoint or start again with --force")
                load_weights(net, recorded)
        elif init:
            load_weights(net, init)
            state.mark("pretrain", init_from=str(init))
        elif stage_config(cfg, "pretrain") is not None:
            c = stage_config(cfg, "pretrain")
            tl, ev = loaders(c)
            Trainer(net, tl, ev, train_cfg=c.train, optim_cfg=c.optim, schedule_cfg=c.schedule, run=run,
                    device=device, stage="pretrain", rank=dist_info.rank, world_size=dist_info.world_size
                    ).fit(resume=run.resumed)
            run.save("pretrain.pt", weights_payload(net))
            state.mark("pretrain", epochs=c.train.epochs)
        else:
            # no pretraining: keep the random initial weights the structure is learned on (PFS studies
            # compare against them, and a resumed run must not depend on re-drawing them)
            run.save("pretrain.pt", weights_payload(net))
            state.mark("pretrain", random_init=True)
        _, ev0 = loaders(cfg)
        test = ev0["test"]
        mf = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        result["dense_test_acc"] = evaluate(net.to(device, memory_format=mf), test)["acc"]
        say(f"dense {cfg.model.name}: test accuracy {100 * result['dense_test_acc']:.2f}%")

        # 2. learn -------------------------------------------------------------------------------
        model = method.attach(net)
        method.prepare(spec, budget)
        learn_cfg = stage_config(cfg, "learn")
        if method.learns and learn_cfg is not None:
            if state.done("learn"):
                model.load_state_dict(run.load("learn.pt")["state_dict"])
            else:
                tl, ev = loaders(learn_cfg)
                tr = Trainer(model, tl, ev, train_cfg=learn_cfg.train, optim_cfg=learn_cfg.optim,
                             schedule_cfg=learn_cfg.schedule, run=run, hooks=[method], device=device,
                             stage="learn", rank=dist_info.rank, world_size=dist_info.world_size)
                tr.fit(resume=run.resumed)
                run.save("learn.pt", weights_payload(model))
                state.mark("learn", epochs=learn_cfg.train.epochs)
        elif method.learns:
            say(f"note: method {method.name} learns its structure, but stages.learn is not set; "
                f"selecting from the initial gates")

        # 3. prune -------------------------------------------------------------------------------
        if state.done("prune"):
            structure = Structure.load(run.file("structure.json"))
            report = state.data["prune"].get("report", {})
        else:
            structure, report = method.select(model, spec, budget)
            structure.meta = {**structure.meta, "method": cfg.method, "report": report}
            structure.save(run.file("structure.json"))
            state.mark("prune", report=report)
        pruned = method.hard_prune(model, structure)
        result["pruned_cost"] = _cost_record(spec, structure)
        result["budget_report"] = report
        pruned = pruned.to(device, memory_format=mf)
        result["pruned_test_acc_before_finetune"] = evaluate(pruned, test)["acc"]
        dense_macs, pr_macs = result["dense_cost"]["mixed"]["macs"], result["pruned_cost"]["mixed"]["macs"]
        say(f"pruned by {method.name}: {pr_macs / 1e6:.2f} M MACs ({100 * pr_macs / dense_macs:.1f}% of dense), "
            f"test accuracy before fine-tuning {100 * result['pruned_test_acc_before_finetune']:.2f}%")

        # 4. finetune ----------------------------------------------------------------------------
        ft = (cfg.stages or {}).get("finetune") or {}
        ft_cfg = stage_config(cfg, "finetune")
        if ft_cfg is not None:
            if ft.get("reinit"):
                _reinit(pruned, ft_cfg.train.seed)
            hooks = list(method.finetune_hooks())
            if ft.get("kd"):
                from ..train.distill import Distillation

                kd = dict(ft["kd"]) if isinstance(ft["kd"], dict) else {}
                # the dense network before pruning, without the gates the learn stage attached to it
                teacher = strip_gates(copy.deepcopy(net if not isinstance(net, GatedModel) else net.net))
                if kd.get("teacher"):
                    teacher = models.create(cfg.model.name, **cfg.model.kwargs)
                    load_weights(teacher, kd["teacher"])
                hooks.append(Distillation(teacher, kd.get("temperature", 4.0), kd.get("alpha", 0.9)))
            if state.done("finetune"):
                pruned = load_compact(run.file("compact"), map_location=device)
            else:
                tl, ev = loaders(ft_cfg)
                tr = Trainer(pruned, tl, ev, train_cfg=ft_cfg.train, optim_cfg=ft_cfg.optim,
                             schedule_cfg=ft_cfg.schedule, run=run, hooks=hooks, device=device, stage="finetune",
                             rank=dist_info.rank, world_size=dist_info.world_size)
                tr.fit(resume=run.resumed)
                if dist_info.is_main:
                    save_compact(pruned, structure, run.file("compact"))
                state.mark("finetune", epochs=ft_cfg.train.epochs)
        elif dist_info.is_main and not state.done("finetune"):
            save_compact(pruned, structure, run.file("compact"))
        result["final_test_acc"] = evaluate(pruned.to(device, memory_format=mf), test)["acc"]
        result["wall_time_s"] = time.time() - t_start
        result["environment"] = environment()
        result["summary"] = (f"{cfg.name} ({cfg.scale}, {method.name}): {pr_macs / 1e6:.2f}/{dense_macs / 1e6:.2f} M MACs "
                             f"({100 * pr_macs / dense_macs:.1f}%), test accuracy dense "
                             f"{100 * result['dense_test_acc']:.2f}% -> pruned {100 * result['pruned_test_acc_before_finetune']:.2f}%"
                             f" -> fine-tuned {100 * result['final_test_acc']:.2f}%")
        if dist_info.is_main:
            write_json(run.file("result.json"), result)
        return result
    finally:
        run.close()


def compact_run(run_dir, out=None) -> Path:
    """Write the compact model of a finished pruning run (``prunelab compact RUN``)."""
    run_dir = Path(run_dir)
    src = run_dir / "compact"
    if not (src / "plan.json").exists():
        if not (run_dir / "structure.json").exists():
            raise ConfigError(f"{run_dir} is not a pruning run (no structure.json); run `prunelab prune` first")
        raise ConfigError(f"{run_dir} has a structure but no compact model yet; finish it with prunelab prune --resume")
    model = load_compact(src)
    out = Path(out) if out else src
    if out != src:
        save_compact(model, Structure.load(src / "plan.json"), out)
    return out


def metrics_of(run_dir) -> list[dict]:
    return read_metrics(run_dir)
