"""Paper-scale training throughput of every bundled config, and the hours one run of it would take.

For each config in prunelab/configs (or ``--only``), at its ``paper`` scale, every training stage is
built as the pipeline builds it (prunelab/workflows/stages.py): the stage's own train/optim/schedule/
data sections, the network of ``model:``, and

* learn     the method's gated network (``method.attach`` + ``method.prepare`` with the config's
            budget) trained with the method as the trainer's hook;
* finetune  dense training of the network with the method's fine-tuning hooks (an upper bound: the
            pruned network that really gets fine-tuned is smaller); a method that does not learn
            (l1, random) only has this stage;
* train     a dense config's only stage (resnet56, bar_wrn_teacher);
* pretrain  only when the config trains one here (at paper scale they start from a checkpoint, i.e.
            the dense config's run, which has its own row).

BAR is timed with its distillation teacher (a random network of the same architecture): the paper's
recipe, which `prunelab experiment bar` fills in for the config's ``teacher: null``.

Each stage is trained by the shared :class:`~prunelab.train.trainer.Trainer` for ``--warmup`` then
``--steps`` timed steps, on SYNTHETIC CIFAR-sized data held on the device (random uint8 images and
random labels, through the real loader's crop/flip/normalise): the kernels are those of CIFAR-10, the
losses and accuracies mean nothing. AMP and channels-last follow the config (on CUDA; the CPU trains
in float32). Then ``--eval-steps`` evaluation batches are timed the same way.

How to read the table: ``img/s`` are training images per second (all processes together under
torchrun), ``eval/s`` evaluated images per second. ``hours`` is an ESTIMATE from that synthetic-data
throughput: for every stage, its epochs x the training images of its split (50,000 CIFAR-10 images
less a held-out part, or only the held-out part for DDNP's search; full batches) / img/s, plus the
evaluated images (10,000 test images and the held-out part, every ``eval_every`` epochs) / eval/s.
Not counted: data loading from disk, checkpoints, one-off passes at the start of a stage (ManiDP's
C, DDNP's feature norms), hard pruning, a smaller pruned network. ``run h`` is the sum over the
config's stages: one run of that config.

    python bench/paper_throughput.py [--device auto|cpu|cuda] [--steps 20] [--warmup 5] [--eval-steps 3]
                                     [--only resnet20_manidp,resnet56] [--json rows.json] [--scale paper]
    torchrun --standalone --nproc_per_node 2 bench/paper_throughput.py --device cuda --only resnet56

Exit status: 0 all rows timed, 1 a row failed (its error is in the table), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback

import numpy as np
import torch

from prunelab import methods, models
from prunelab.config import CONFIG_DIR, DataConfig, load_config
from prunelab.data.loader import CifarLoader
from prunelab.errors import ConfigError
from prunelab.pruning.budget import Budget
from prunelab.train.distill import Distillation
from prunelab.train.distributed import device_for, init_from_env, shutdown
from prunelab.train.run import setup_runtime
from prunelab.train.trainer import Trainer, amp_dtype, resolve_device
from prunelab.workflows.stages import STAGES, stage_config

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
TABLE_MARK = "== throughput table"  # gpu_check.sh prints the table from this line on


# -- what one run of a config trains --------------------------------------------------------------


def split_sizes(d: DataConfig) -> tuple[int, int]:
    """(training images, evaluated images per evaluation) of a data config on CIFAR-10, as
    ``build_loaders`` splits it (holdout count or fraction, DDNP's train-on-holdout, val/test subsets)."""
    n = 10 * d.train_per_class if d.train_per_class else CIFAR_TRAIN
    train, val = n, 0
    if d.holdout:
        held = int(round(d.holdout * n)) if d.holdout < 1 else int(d.holdout)
        train, val = (held, n - held) if d.train_on_holdout else (n - held, held)
        if d.val_per_class:
            val = min(val, 10 * d.val_per_class)
    test = 10 * d.test_per_class if d.test_per_class else CIFAR_TEST
    return train, test + val


def stages_of(cfg) -> list[tuple[str, object]]:
    """[(stage, stage config)] that one run of ``cfg`` trains: the pipeline's stages for a config with
    a method, the single ``train`` stage of a dense config."""
    if not cfg.method:
        return [("train", cfg)]
    out = []
    for name in STAGES:
        if name == "prune":
            continue
        c = stage_config(cfg, name)
        pre = (cfg.stages or {}).get("pretrain") or {}
        if c is None or (name == "pretrain" and (pre.get("init_from") or cfg.train.init_from)):
            continue  # a pretrain stage that loads a checkpoint trains nothing here
        out.append((name, c))
    return out


def model_label(cfg) -> str:
    kw = ",".join(f"{k}={v}" for k, v in (cfg.model.kwargs or {}).items())
    return f"{cfg.model.name}({kw})" if kw else cfg.model.name


def build_stage(cfg, stage: str):
    """(model, hooks, method label) of one stage, as prunelab/workflows/stages.py makes them."""
    net = models.create(cfg.model.name, **cfg.model.kwargs)
    if not cfg.method:
        return net, [], "-"
    method = methods.from_config(cfg.method)
    label, hooks = method.name, []
    if stage == "learn" and method.learns:
        model = method.attach(net)
        method.prepare(models.describe(net), Budget.parse(cfg.budget) if cfg.budget else None)
        hooks = [method]
    else:
        model = net
        if stage == "finetune":
            hooks = list(method.finetune_hooks())
            kd = ((cfg.stages or {}).get("finetune") or {}).get("kd")
            if kd:
                kd = kd if isinstance(kd, dict) else {}
                hooks.append(Distillation(models.create(cfg.model.name, **cfg.model.kwargs),
                                          kd.get("temperature", 4.0), kd.get("alpha", 0.9)))
    if method.name == "bar" and stage in ("learn", "finetune") and not any(isinstance(h, Distillation) for h in hooks):
        # the config leaves the teacher to the study; a paper run distils in both phases
        o = method.options
        hooks.append(Distillation(models.create(cfg.model.name, **cfg.model.kwargs), o.kd_temperature, o.kd_alpha))
        label += "+kd"
    return model, hooks, label


# -- timing ---------------------------------------------------------------------------------------


def synthetic_loader(n: int, batch: int, device, *, train: bool, augment: bool, channels_last: bool, dist,
                     seed: int = 0) -> CifarLoader:
    """Random uint8 CIFAR-sized images and random labels, held on ``device`` like the real split."""
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = g.integers(0, 10, size=n)
    return CifarLoader(images, labels, batch_size=batch, train=train, augment=augment, device=device,
                       channels_last=channels_last, rank=dist.rank, world_size=dist.world_size)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(c, model, hooks, device, dist, args) -> dict:
    """Training and evaluation images per second of one stage with the shared Trainer."""
    d, ws = c.data, dist.world_size
    per_rank = d.batch_size // ws
    steps = args.warmup + args.steps
    # one epoch longer than the timed steps: an epoch end would evaluate and run the hooks' end_epoch
    train = synthetic_loader((steps + 1) * per_rank * ws, per_rank, device, train=True, augment=d.augment,
                             channels_last=c.train.channels_last, dist=dist)
    tcfg = c.train
    tcfg.progress, tcfg.max_steps = False, args.warmup
    tr = Trainer(model, train, {}, train_cfg=tcfg, optim_cfg=c.optim, schedule_cfg=c.schedule, hooks=hooks,
                 device=device, rank=dist.rank, world_size=ws, stage="bench")
    tr.fit()  # warm-up: cuDNN autotuning, allocator, a method's one-off pass at its first step
    tr.cfg.max_steps = tr.global_step + args.steps
    _sync(device)
    t = time.perf_counter()
    tr.fit()
    _sync(device)
    train_s = time.perf_counter() - t
    done = tr.global_step - args.warmup
    out = {"steps": done, "train_images_per_s": done * per_rank * ws / train_s}
    if args.eval_steps <= 0:
        return out
    # CPU throughput hardly depends on the batch: the training batch keeps a CPU run short
    eb = args.eval_batch or (d.eval_batch_size if device.type == "cuda" else d.batch_size)
    eb_rank = max(eb // ws, 1)
    warm = synthetic_loader(eb_rank * ws, eb_rank, device, train=False, augment=False,
                            channels_last=c.train.channels_last, dist=dist, seed=1)
    timed = synthetic_loader(args.eval_steps * eb_rank * ws, eb_rank, device, train=False, augment=False,
                             channels_last=c.train.channels_last, dist=dist, seed=2)
    watchers = [h for h in tr.hooks if h.wants_eval_batches]

    def collect(b):  # what the trainer does at an epoch's end: per-instance statistics of a method
        for h in watchers:
            h.eval_batch(tr, "test", b)

    tr.evaluate(warm, collect=collect if watchers else None)
    _sync(device)
    t = time.perf_counter()
    r = tr.evaluate(timed, collect=collect if watchers else None)
    _sync(device)
    out["eval_images_per_s"] = r["n"] / (time.perf_counter() - t)  # n is summed over the processes
    return out


def hours(c, rate: dict) -> tuple[float | None, int, int]:
    """(projected hours, training images per epoch, evaluated images per evaluation) of a stage."""
    train_n, eval_n = split_sizes(c.data)
    per_epoch = (train_n // c.data.batch_size) * c.data.batch_size  # full batches (drop_last)
    e, every = c.train.epochs, c.train.eval_every
    evals = e // every + (1 if e % every else 0)
    ips = rate.get("train_images_per_s")
    if not ips:
        return None, per_epoch, eval_n
    s = e * per_epoch / ips
    if rate.get("eval_images_per_s"):
        s += evals * eval_n / rate["eval_images_per_s"]
    return s / 3600, per_epoch, eval_n


# -- the table ------------------------------------------------------------------------------------

# (title, row key, format, minimum width): the minimum keeps the rows printed as they go aligned
COLUMNS = [("config", "config", "s", 15), ("method", "method", "s", 7), ("model", "model", "s", 20),
           ("stage", "stage", "s", 8), ("device", "device", "s", 12), ("batch", "batch", "d", 5),
           ("img/s", "train_images_per_s", ".0f", 7), ("eval/s", "eval_images_per_s", ".0f", 7),
           ("epochs", "epochs", "d", 6), ("imgs/ep", "train_images_per_epoch", "d", 7), ("hours", "hours", ".2f", 7),
           ("run h", "run_hours", ".2f", 7)]


def cell(row: dict, key: str, f: str) -> str:
    v = row.get(key)
    if f == ".0f" and v is not None and v < 10:
        f = ".2f"  # a paper network on the CPU: 1.4 img/s, not "1"
    return "-" if v is None else str(v) if f == "s" else format(v, f)


def table(rows: list[dict]) -> list[str]:
    """The rows as aligned text (text left, numbers right), a failed row's error after it."""
    widths = [max([len(t), w] + [len(cell(r, k, f)) for r in rows]) for t, k, f, w in COLUMNS]

    def line(cells):
        return " ".join(c.ljust(w) if f == "s" else c.rjust(w) for c, w, (_, _, f, _) in zip(cells, widths, COLUMNS))

    out = [line([t for t, _, _, _ in COLUMNS])]
    for r in rows:
        failed = f"  FAILED: {r['error']}" if r.get("error") else ""
        out.append(line([cell(r, k, f) for _, k, f, _ in COLUMNS]) + failed)
    return out


def device_label(device, c) -> str:
    if device.type != "cuda":
        return "cpu fp32"
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp_dtype(c.train.amp, device)]
    return f"cuda {amp}{' cl' if c.train.channels_last else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    # the CPU defaults are small: a paper network (BAR's WRN: 7.5 GMACs an image) is slow there
    ap.add_argument("--steps", type=int, help="timed training steps per stage (default 20 on CUDA, 2 on CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps first, >= 1 (default 5 on CUDA, 1 on CPU)")
    ap.add_argument("--eval-steps", type=int,
                    help="timed evaluation batches, 0: no evaluation time (default 3 on CUDA, 1 on CPU)")
    ap.add_argument("--eval-batch", type=int, default=0,
                    help="evaluation batch (default: the config's on CUDA, the training batch on CPU)")
    ap.add_argument("--only", default="", help="comma-separated config names (default: every bundled config)")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--scale", default="paper", choices=("ci", "cpu", "paper"),
                    help="config scale (default paper; ci checks the mechanics in seconds)")
    args = ap.parse_args(argv)
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    bad = [w for w in only if w not in names]
    small = (args.steps or 1) < 1 or (args.warmup is not None and args.warmup < 1) or (args.eval_steps or 0) < 0
    if bad or small or args.device not in ("auto", "cpu", "cuda"):
        why = (f"unknown config(s) {bad}; configs: {', '.join(names)}" if bad else
               "--steps and --warmup must be >= 1, --eval-steps >= 0" if small else
               f"--device must be auto, cpu or cuda, got {args.device!r}")
        print(f"paper_throughput: {why}", file=sys.stderr)
        return 2
    try:
        cuda = resolve_device(args.device).type == "cuda"
    except ConfigError:
        print("paper_throughput: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    for k, on_cuda, on_cpu in (("steps", 20, 2), ("warmup", 5, 1), ("eval_steps", 3, 1)):
        if getattr(args, k) is None:
            setattr(args, k, on_cuda if cuda else on_cpu)
    dist = init_from_env()
    device = device_for(dist, args.device)
    main_rank = dist.is_main
    say = print if main_rank else (lambda *a, **k: None)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    say(f"{args.scale}-scale throughput: torch {torch.__version__}, {where}, {dist.world_size} process(es), "
        f"{torch.get_num_threads()} CPU thread(s); {args.warmup} + {args.steps} steps per stage, "
        f"{args.eval_steps} eval batches", flush=True)
    say("data: SYNTHETIC (random images and labels on the device); hours are an estimate from synthetic-data "
        "throughput on the configs' CIFAR-10 splits (50,000 training images less any held-out part)", flush=True)
    rows, failed = [], 0
    for name in only or names:
        cfg = load_config(name, args.scale, [f"train.device={args.device}"])
        config_rows = []
        for stage, c in stages_of(cfg):
            row = {"config": name, "method": (cfg.method or {}).get("name", "-"), "model": model_label(cfg),
                   "stage": stage, "device": device.type, "batch": c.data.batch_size, "epochs": c.train.epochs}
            try:
                dev = setup_runtime(c, dist)  # cuDNN benchmark, seed, as the pipeline sets them
                torch.manual_seed(0)
                model, hooks, label = build_stage(c, stage)
                row["method"], row["device"] = label, device_label(dev, c)
                row.update(time_stage(c, model, hooks, dev, dist, args))
                row["hours"], row["train_images_per_epoch"], row["eval_images"] = hours(c, row)
            except Exception as e:  # one failed stage (OOM, a method's error) must not hide the others
                failed += 1
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                if main_rank:
                    traceback.print_exc(file=sys.stderr)
            finally:
                model = hooks = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            config_rows.append(row)
            say("  " + table([row])[1], flush=True)  # as it goes: a run cut short still shows what it timed
        total = [r.get("hours") for r in config_rows]
        run_h = sum(total) if total and all(h is not None for h in total) else None
        for r in config_rows:
            r["run_hours"] = run_h
        rows += config_rows
    say(f"\n{TABLE_MARK}: {args.scale} scale, {device.type}, {dist.world_size} process(es), synthetic data; "
        f"hours: estimate from synthetic-data throughput ==")
    for line in table(rows):
        say(line)
    say("img/s: training images per second; eval/s: evaluated images per second; hours: the stage's epochs on its "
        "CIFAR-10 split plus its evaluations; run h: one run of the config (all its stages)")
    if main_rank and args.json:
        with open(args.json, "w") as f:
            json.dump({"scale": args.scale, "device": where, "world_size": dist.world_size,
                       "torch": torch.__version__, "data": "synthetic", "steps": args.steps, "warmup": args.warmup,
                       "rows": rows}, f, indent=1)
    shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
