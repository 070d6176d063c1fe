"""The four stages of a pruning run, one function each: pretrain, learn, prune, fine-tune.

Each stage reads and writes one :class:`StageContext` (the run directory, the device, the loaders'
factory, the network, the method) and records itself in ``pipeline.json`` when it finishes, so a
killed run continues with ``--resume`` from the stage (and, inside a training stage, the step) where
it stopped. :func:`prunelab.workflows.pipeline.run_pipeline` calls them in order; studies and
notebooks may call them on their own.
"""

from __future__ import annotations

import copy
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import models
from ..config import Config, _coerce, build, deep_merge
from ..errors import ConfigError, RunDirError, suggest
from ..methods import Method
from ..pruning.budget import Budget
from ..pruning.gates import GatedModel, strip_gates
from ..pruning.result import GeneratedResult, PrunedResult, SelectReport, StaticResult, load_result
from ..pruning.structure import Structure
from ..train.distributed import DistInfo
from ..train.rundir import RunDir
from ..train.run import build_loaders
from ..train.trainer import Trainer, evaluate, load_weights, weights_fingerprint, weights_payload
from ..runfiles import read_record
from ..utils import write_json

STAGES = ("pretrain", "learn", "prune", "finetune")
SECTIONS = ("train", "optim", "schedule", "data")  # merged over the top-level sections for that stage
# the keys each stage reads: a key that only another stage reads would be ignored, so it is refused
STAGE_KEYS = {"pretrain": {*SECTIONS, "enabled", "init_from"}, "learn": {*SECTIONS, "enabled"}, "prune": set(),
              "finetune": {*SECTIONS, "enabled", "reinit", "kd"}}
KD_DEFAULTS = {"teacher": None, "temperature": 4.0, "alpha": 0.9}  # BAR's T and alpha (train/distill.py)


def _kd(value, key: str):
    """``kd``: a boolean, or a mapping of ``teacher`` (weights; default the dense network before pruning),
    ``temperature`` (> 0) and ``alpha`` (in [0, 1]), returned with the defaults filled in."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be true, false or a mapping {{teacher: PATH, temperature: T, alpha: A}}, "
                          f"got {value!r}")
    bad = sorted(set(value) - set(KD_DEFAULTS))
    if bad:
        raise ConfigError(f"{key} has no key {bad[0]!r}.{suggest(bad[0], KD_DEFAULTS)} Valid: {', '.join(KD_DEFAULTS)}")
    kd = {**KD_DEFAULTS, **value}
    if kd["teacher"] is not None:
        kd["teacher"] = _coerce(kd["teacher"], str, f"{key}.teacher")
    kd["temperature"] = _coerce(kd["temperature"], float, f"{key}.temperature")
    kd["alpha"] = _coerce(kd["alpha"], float, f"{key}.alpha")
    if kd["temperature"] <= 0 or not 0 <= kd["alpha"] <= 1:
        raise ConfigError(f"{key} needs temperature > 0 and alpha in [0, 1], got {kd['temperature']} and {kd['alpha']}")
    return kd


def stage_options(cfg: Config, stage: str) -> dict:
    """The checked ``stages.<stage>`` entry ({} when absent), one line on any bad key or value:
    only the keys that stage reads, ``enabled`` and ``reinit`` booleans, ``init_from`` a path, ``kd`` a
    boolean or a mapping (:func:`_kd`), the sections mappings (their values are checked when the
    stage's config is built)."""
    st = (cfg.stages or {}).get(stage)
    if st is None:
        return {}
    if not isinstance(st, dict):
        raise ConfigError(f"stages.{stage} must be a mapping of its settings, got {st!r}")
    valid = STAGE_KEYS[stage]
    for k in st:
        if k not in valid:
            readers = [s for s, keys in STAGE_KEYS.items() if k in keys]
            names = ", ".join(f"stages.{r}" for r in readers)
            hint = f" (only {names} read{'s' if len(readers) == 1 else ''} it)" if readers else suggest(k, valid)
            raise ConfigError(f"stages.{stage} has no key {k!r}{hint}; valid keys of stages.{stage}: "
                              f"{', '.join(sorted(valid)) or 'none (pruning trains nothing)'}")
    out = {k: v for k, v in st.items() if v is not None}  # null unsets a key (e.g. one a scale block set)
    for k in ("enabled", "reinit"):
        if k in out:
            out[k] = _coerce(out[k], bool, f"stages.{stage}.{k}")
    if out.get("init_from") is not None:
        out["init_from"] = _coerce(out["init_from"], str, f"stages.{stage}.init_from")
    if "kd" in out:
        out["kd"] = _kd(out["kd"], f"stages.{stage}.kd")
    for k in SECTIONS:
        if k in out and not isinstance(out[k], dict):
            raise ConfigError(f"stages.{stage}.{k} must be a mapping of {k} settings, got {out[k]!r}")
    if "init_from" in out.get("train", {}):  # a stage trains on from the previous one's weights
        raise ConfigError(f"stages.{stage}.train.init_from is not read (each stage starts from the previous one's "
                          f"weights); start the run from a checkpoint with stages.pretrain.init_from")
    return out


def check_stages(cfg: Config) -> None:
    """Every ``stages:`` entry, before a pipeline writes anything: known stage names and typed keys."""
    for name in cfg.stages or {}:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}.{suggest(name, STAGES)} Stages: {', '.join(STAGES)}")
        stage_options(cfg, name)


def stage_config(cfg: Config, stage: str) -> Config | None:
    """The config a stage trains with (None when the stage is disabled or has nothing to train).

    A stage's ``train``/``optim``/``schedule``/``data`` entries override the top-level sections for
    that stage only.
    """
    if (cfg.stages or {}).get(stage) is None:
        return None
    st = stage_options(cfg, stage)  # checked, nulls dropped: a null section means the top-level one
    if st.get("enabled") is False:
        return None
    base = cfg.to_dict()
    merged = deep_merge(base, {k: st[k] for k in SECTIONS if k in st})
    merged["stages"] = {}
    return build(merged)


class StageLog:
    """``pipeline.json``: the finished stages and what each recorded."""

    def __init__(self, run: RunDir):
        self.run = run
        p = run.file("pipeline.json")
        self.data = read_record(p, "pipeline") if run.resumed and p.exists() else {"done": []}
        if not isinstance(self.data.get("done"), list):
            raise RunDirError(f"{p} is damaged (no list of finished stages); restore it or start over with --force")

    def done(self, stage) -> bool:
        return stage in self.data["done"]

    def info(self, stage) -> dict:
        return self.data.get(stage, {})

    def mark(self, stage, **info):
        self.data["done"].append(stage)
        self.data[stage] = info
        write_json(self.run.file("pipeline.json"), self.data)
        if os.environ.get("PRUNELAB_TEST_SIGKILL_AFTER_STAGE") == stage:  # test hook: die like `kill -9`
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class StageContext:
    """What the stages share. ``net`` is the dense network; ``model`` the method's gated network."""

    cfg: Config
    run: RunDir
    device: torch.device
    dist: DistInfo
    method: Method
    budget: Budget | None
    log: StageLog
    say: object = print
    net: nn.Module | None = None
    model: nn.Module | None = None
    spec: object = None
    test_loader: object = None
    record: dict = field(default_factory=dict)

    def loaders(self, c: Config):
        return build_loaders(c.data, self.device, seed=c.train.seed, channels_last=c.train.channels_last,
                             dist_info=self.dist)

    @property
    def memory_format(self):
        return torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format

    def trainer(self, model, c: Config, stage: str, hooks=()) -> Trainer:
        tl, ev = self.loaders(c)
        return Trainer(model, tl, ev, train_cfg=c.train, optim_cfg=c.optim, schedule_cfg=c.schedule, run=self.run,
                       hooks=list(hooks), device=self.device, stage=stage, rank=self.dist.rank,
                       world_size=self.dist.world_size)

    def test_acc(self, module: nn.Module) -> float:
        return evaluate(module.to(self.device, memory_format=self.memory_format), self.test_loader)["acc"]


# -- 1. pretrain ----------------------------------------------------------------------------------


def pretrain(ctx: StageContext) -> nn.Module:
    """Build the dense network and give it its starting weights: a checkpoint (``init_from``), a
    training stage here, or the random initialisation (kept in ``pretrain.pt`` so that a resumed run
    does not depend on drawing it again). Logs the dense test accuracy."""
    cfg, run, log = ctx.cfg, ctx.run, ctx.log
    net = models.create(cfg.model.name, **cfg.model.kwargs)
    init = stage_options(cfg, "pretrain").get("init_from") or cfg.train.init_from
    if log.done("pretrain"):
        # a pretrain stage trained here saved pretrain.pt; one initialised from a checkpoint recorded it
        recorded = log.info("pretrain").get("init_from")
        if run.file("pretrain.pt").exists() or not recorded:
            load_weights(net, run.file("pretrain.pt"))
        else:
            if not Path(recorded).exists():
                raise ConfigError(f"cannot resume {run.path}: its pretrain stage started from {recorded}, which no "
                                  f"longer exists; restore that checkpoint or start again with --force")
            load_weights(net, recorded)
            if log.info("pretrain").get("init_weights_sha256"):
                ctx.record["init_weights_sha256"] = log.info("pretrain")["init_weights_sha256"]
    elif init:
        load_weights(net, init)
        # which weights, not only which path: runs compared "from the same checkpoint" across sessions (where
        # the checkpoint was trained again) can then be checked to be (or not) from the very same weights
        ctx.record["init_weights_sha256"] = weights_fingerprint(init)
        log.mark("pretrain", init_from=str(init), init_weights_sha256=ctx.record["init_weights_sha256"])
    elif stage_config(cfg, "pretrain") is not None:
        c = stage_config(cfg, "pretrain")
        ctx.trainer(net, c, "pretrain").fit(resume=run.resumed)
        run.save("pretrain.pt", weights_payload(net))
        log.mark("pretrain", epochs=c.train.epochs)
    else:
        run.save("pretrain.pt", weights_payload(net))
        log.mark("pretrain", random_init=True)
    ctx.net, ctx.spec = net, models.describe(net)
    _, ev = ctx.loaders(cfg)
    ctx.test_loader = ev["test"]
    ctx.record["dense_test_acc"] = ctx.test_acc(net)
    ctx.say(f"dense {cfg.model.name}: test accuracy {100 * ctx.record['dense_test_acc']:.2f}%")
    return net


# -- 2. learn -------------------------------------------------------------------------------------


def learn(ctx: StageContext) -> nn.Module:
    """Attach the method's gates and controller and, for a method that learns, train them (the method
    is a hook of the shared trainer). ``learn.pt`` holds the gated network and the method's state."""
    method, run, log = ctx.method, ctx.run, ctx.log
    model = method.attach(ctx.net)
    method.prepare(ctx.spec, ctx.budget)
    learn_cfg = stage_config(ctx.cfg, "learn")
    if method.learns and learn_cfg is not None:
        if log.done("learn"):
            payload = run.load("learn.pt")
            model.load_state_dict(payload["state_dict"])
            # what select needs (best gates, counters) was saved with the learned weights
            method.load_state_dict(payload.get("method_state", {}))
        else:
            ctx.trainer(model, learn_cfg, "learn", hooks=[method]).fit(resume=run.resumed)
            run.save("learn.pt", {**weights_payload(model), "method_state": method.state_dict()})
            log.mark("learn", epochs=learn_cfg.train.epochs)
    elif method.learns:
        ctx.say(f"note: method {method.name} learns its structure, but stages.learn is not set; "
                f"selecting from the initial gates")
    ctx.model = model
    return model


# -- 3. prune -------------------------------------------------------------------------------------


def _cost_record(result: PrunedResult, loader) -> dict:
    out = {}
    for residual in ("mixed", "regular"):
        c = result.cost(loader, residual=residual)
        out[residual] = {"macs": c.macs, "flops": c.flops, "params": c.params, "volume": c.volume}
        if c.per_instance is not None:
            out[residual]["distribution"] = {k: v for k, v in c.as_dict().items()
                                             if k in ("macs_std", "macs_quantiles", "instances")}
        out["convention"] = c.convention if residual == "mixed" else out["convention"]
    return out


def prune(ctx: StageContext) -> PrunedResult:
    """The method's pruned result (its ``finalize``), saved to ``pruned/`` (the plan and the weights
    before fine-tuning; a static result also writes ``structure.json``). Logs the accuracy of the learned
    network (a method that learns) and after hard pruning."""
    method, run, log = ctx.method, ctx.run, ctx.log
    if method.learns and stage_config(ctx.cfg, "learn") is not None:
        # the learned (gated, eval-mode) network before anything is removed: a hard prune that loses
        # what the learning stage found shows as the gap to pruned_test_acc_before_finetune
        ctx.record["learned_test_acc"] = ctx.test_acc(ctx.model)
        ctx.say(f"learned network (gates in eval mode): test accuracy {100 * ctx.record['learned_test_acc']:.2f}%")
    if log.done("prune") and run.file("pruned").joinpath("plan.json").exists():
        result = load_result(run.file("pruned"), map_location=ctx.device)
    elif log.done("prune"):  # a run directory written before pruned/ existed: the structure is the record
        structure = Structure.load(run.file("structure.json"))
        report = SelectReport.from_dict(log.info("prune").get("report", {}))
        result = StaticResult(method.hard_prune(ctx.model, structure), structure, report)
    else:
        result = method.finalize(ctx.model, ctx.spec, ctx.budget)
        if isinstance(result, StaticResult):
            result.structure.save(run.file("structure.json"))
        if ctx.dist.is_main:
            result.save(run.file("pruned"))
        log.mark("prune", report=result.report.to_dict(), kind=result.kind)
    result.module = result.module.to(ctx.device, memory_format=ctx.memory_format)
    rep = result.report
    # on the console, not only in result.json; an unreachable budget already said so in one line, naming
    # its floor (pruning.budget), and a second, generic line would only repeat it
    if rep.budget_met is False and not (rep.extra or {}).get("unreachable"):
        import sys

        print(f"prunelab: warning: {method.name} did not meet the budget: {rep.metric} {rep.achieved:,.0f} > target "
              f"{rep.target:,.0f} ({100 * (rep.achieved / rep.target - 1):+.1f}%); see budget_report in result.json "
              f"(min_channels or a method that reaches its budget by training may hold it up)", file=sys.stderr)
    ctx.record["result_kind"] = result.kind
    ctx.record["pruned_cost"] = _cost_record(result, ctx.test_loader)
    if ctx.budget is not None and ctx.budget.metric == "latency" and isinstance(result, StaticResult):
        ctx.record["latency"] = _measured_latency(ctx, result)
    ctx.record["budget_report"] = result.report.to_dict()
    ctx.record["pruned_test_acc_before_finetune"] = ctx.test_acc(result.module)
    dense = ctx.record["dense_cost"]["mixed"]["macs"]
    pr = ctx.record["pruned_cost"]["mixed"]["macs"]
    ctx.say(f"pruned by {method.name} ({result.kind}): {pr / 1e6:.2f} M MACs ({100 * pr / dense:.1f}% of dense), "
            f"test accuracy before fine-tuning {100 * ctx.record['pruned_test_acc_before_finetune']:.2f}%")
    if isinstance(result, GeneratedResult) and method.extracts:
        result = extract(ctx, result)
    return result


def _measured_latency(ctx: StageContext, result: StaticResult) -> dict:
    """A latency budget's outcome: the table's prediction next to the measured inference time of the
    compact network and of the dense one (interleaved, minimum over rounds), at the budget's batch."""
    from ..pruning.latency import measure_latency

    b, rep = ctx.budget, result.report.to_dict()
    dense = strip_gates(copy.deepcopy(ctx.net.net if isinstance(ctx.net, GatedModel) else ctx.net))
    dense_s, pruned_s = measure_latency(dense, ctx.spec.input_size, batch=b.batch, device=b.device,
                                        others=(copy.deepcopy(result.module),))
    out = {"batch": b.batch, "device": rep.get("device"), "threads": rep.get("threads"),
           "target_keep": b.keep, "predicted_keep": rep.get("achieved_keep"),
           "predicted_s": rep.get("achieved"), "dense_predicted_s": rep.get("reference"),
           "measured_s": pruned_s, "dense_measured_s": dense_s, "measured_keep": pruned_s / dense_s,
           "round_to": rep.get("round_to")}
    out["relative_error"] = out["measured_keep"] / b.keep - 1
    ctx.say(f"latency at batch {b.batch}: measured {1e3 * pruned_s:.3f} ms vs dense {1e3 * dense_s:.3f} ms "
            f"({100 * out['measured_keep']:.1f}%; target {100 * b.keep:.1f}%, predicted "
            f"{100 * (out['predicted_keep'] or float('nan')):.1f}%)")
    return out


def extract(ctx: StageContext, result: GeneratedResult) -> StaticResult:
    """The generated result's static network (its eval-mode masks, physically compacted), which the
    fine-tuning stage then trains alone; ``structure.json`` records it. Logs its test accuracy, which
    equals the masked network's (the stage boundary a lost extraction would show at)."""
    static = result.to_static()
    if ctx.dist.is_main and not ctx.run.file("structure.json").exists():
        static.structure.save(ctx.run.file("structure.json"))
    static.module = static.module.to(ctx.device, memory_format=ctx.memory_format)
    ctx.record["extracted_test_acc"] = ctx.test_acc(static.module)
    ctx.say(f"extracted static network: test accuracy {100 * ctx.record['extracted_test_acc']:.2f}% "
            f"(masked {100 * ctx.record['pruned_test_acc_before_finetune']:.2f}%)")
    return static


# -- 4. fine-tune ---------------------------------------------------------------------------------


def reinit(model: nn.Module, seed: int) -> None:
    """Fresh weights for a pruned network trained from scratch (PFS's Scratch-B), as the official code
    initialises it: conv N(0, sqrt(2 / (k^2 C_out))), BN weight 1 (ResNets) or 0.5 (VGG) and bias 0, the
    classifier PyTorch's default (ResNets) or N(0, 0.01) with bias 0 (VGG) (docs/decisions.md §3.6)."""
    from ..models.registry import get_entry

    name = getattr(model, "prunelab_name", None)
    vgg = bool(name) and get_entry(name).family == "vgg"
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.5 if vgg else 1.0)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            if vgg:
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()


def _distillation(ctx: StageContext, kd):
    from ..train.distill import Distillation

    kd = kd if isinstance(kd, dict) else KD_DEFAULTS  # checked and completed by stage_options
    # the dense network before pruning, without the gates the learn stage attached to it
    net = ctx.net.net if isinstance(ctx.net, GatedModel) else ctx.net
    teacher = strip_gates(copy.deepcopy(net))
    if kd.get("teacher"):
        teacher = models.create(ctx.cfg.model.name, **ctx.cfg.model.kwargs)
        load_weights(teacher, kd["teacher"])
    return Distillation(teacher, kd["temperature"], kd["alpha"])


def finetune(ctx: StageContext, result: PrunedResult) -> PrunedResult:
    """Fine-tune (or, with ``reinit``, train from scratch) the pruned module; save the final result to
    ``compact/`` (static) or ``final/`` (dynamic, generated). Logs the final test accuracy."""
    cfg, run, log = ctx.cfg, ctx.run, ctx.log
    ft = stage_options(cfg, "finetune")
    ft_cfg = stage_config(cfg, "finetune")
    final = run.file(result.final_dir)
    if ft_cfg is not None:
        if log.done("finetune"):
            result = load_result(final, map_location=ctx.device)
        else:
            if ft.get("reinit"):
                reinit(result.module, ft_cfg.train.seed)
            hooks = list(ctx.method.finetune_hooks())
            if ft.get("kd"):
                hooks.append(_distillation(ctx, ft["kd"]))
            ctx.trainer(result.module, ft_cfg, "finetune", hooks).fit(resume=run.resumed)
            if ctx.dist.is_main:
                result.save(final)
            log.mark("finetune", epochs=ft_cfg.train.epochs)
    elif ctx.dist.is_main and not log.done("finetune"):
        result.save(final)
    result.module = result.module.to(ctx.device, memory_format=ctx.memory_format)
    # fine-tuning changes a dynamic result's per-input masks (its predictors train too): count again
    ctx.record["final_cost"] = (ctx.record["pruned_cost"] if isinstance(result, StaticResult)
                                else _cost_record(result, ctx.test_loader))
    ctx.record["final_test_acc"] = ctx.test_acc(result.module)
    ctx.say(f"final test accuracy {100 * ctx.record['final_test_acc']:.2f}%")
    return result
