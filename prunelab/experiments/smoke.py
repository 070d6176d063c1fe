"""Paper-scale smoke run: every bundled config, at its ``paper`` scale, through its whole pipeline on CPU.

    prunelab experiment all --scale paper --smoke [--out DIR] [--parts resnet56,bar_wrn_bar]

Each config is loaded at ``paper`` scale with the paper's model (full width and depth), method,
options, budget and stages, and with four things shortened or replaced (:func:`smoke_overrides`):

* the checkpoints the paper runs start from (``stages.pretrain.init_from``, ``train.init_from``) and a
  distillation teacher named by its path are replaced by one file of random weights of the config's
  model, its BatchNorm statistics measured on the smoke images (:func:`random_checkpoint`), so that the
  run goes through the same path (checked, loaded and recorded as a checkpoint). Nulling ``init_from``
  instead would make the pretrain stage train with the top-level recipe, which no paper run does;
* the data by a seeded subset of ``images_per_class`` real CIFAR-10 images per class (train and test),
  a held-out split taking half of it where the config holds one out (the paper's 5,000 or 5 % would
  not fit), the batch being the whole training split of the stage, so that one epoch is one step;
* every training stage stops after ``steps`` optimisation steps (``train.max_steps``, which every
  stage's trainer reads). The epochs, schedules and budgets keep their paper values: the learning
  rate, BAR's bound and ManiDP's remain rate are at the start of their paper schedules;
* the device is the CPU.

Dense configs (no ``method``: ``prunelab train``) go through :func:`prunelab.workflows.train`, pruning
configs (``prunelab prune``) through :func:`prunelab.workflows.run_pipeline` (pretrain, learn, prune,
extract where the method extracts, fine-tune, save). The saved result is then reloaded as ``prunelab
eval`` reloads it (``model.pt``, or ``compact/``/``final/`` through
:func:`prunelab.pruning.result.load_result`) and the real test images go through the reloaded network
(:func:`_forward_check`): the outputs must have the right shape, give the accuracy the run recorded for
the network it saved, and be finite, unless the run's own evaluations were already non-finite before it
saved (the row then passes with a ``note``: ManiDP's paper recipe, lr 0.05 and lambda_sim 1 from random
weights, overflows in eval mode after one step; from a trained ResNet-20 it stays finite).

What a passing smoke run proves: every bundled paper config resolves and validates; its model builds
at full size; its method attaches, trains (every end-of-epoch path included: evaluation, checkpoint,
the method's epoch hook), selects, prunes, compacts or extracts, fine-tunes and saves; what it saved
reloads into the network it saved, whose outputs on real images have the right shape (and are finite
where the run's were); each training stage stops at ``steps`` steps. What it does not prove: anything
about the numbers of a full run (the accuracy reached, that the losses stay finite over hundreds of
epochs from the paper's checkpoints, that BAR's barrier or DDNP's resource loss reach the budget by
training: after two steps BAR meets it only through its trimming fallback, ManiDP's thresholds have made
one update and DDNP's widths barely moved), the paper-scale data pipeline (50,000 images, the paper's
batch sizes and held-out splits), and anything on the GPU (AMP, ``channels_last`` kernels,
``torch.compile``, DDP, memory at the paper's batch size): on the CPU, AMP is off.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import traceback
from pathlib import Path

from ..config import CONFIG_DIR, Config, DataConfig, deep_merge, from_dict, load_config
from ..errors import ConfigError, suggest

TRAINING_STAGES = ("pretrain", "learn", "finetune")


def config_names() -> list[str]:
    """Every bundled config (``prunelab/configs/*.yaml``), by name."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def is_dense(cfg: Config) -> bool:
    """A config without a ``method`` trains a dense network (``prunelab train``); one with a method is
    a pruning pipeline (``prunelab prune``)."""
    return not (cfg.method or {}).get("name")


def _shrunk_data(d: DataConfig, images_per_class: int) -> dict:
    """Data overrides for one stage's data section ``d``: ``images_per_class`` images per class, half
    of them held out where ``d`` holds some out, the batch the whole training split (one step an epoch)."""
    n = 10 * images_per_class
    out = {"train_per_class": images_per_class, "test_per_class": images_per_class}
    if d.holdout:
        out["holdout"] = 0.5
        held = int(round(0.5 * n))
        if d.val_per_class is not None:
            out["val_per_class"] = 1
        n = held if d.train_on_holdout else n - held
    out["batch_size"] = n
    return out


def random_checkpoint(cfg: Config, path, data: DataConfig) -> str:
    """Write ``cfg``'s model at its random initialisation (seed ``train.seed``) to ``path`` as a weights
    file, its BatchNorm running statistics measured on the training split of ``data``: the stand-in for
    a trained checkpoint (with the initial statistics, mean 0 and variance 1, the eval-mode logits of a
    random ResNet-56 on real images reach about 1e4; measured ones keep them near 1, as a trained
    network's are). Returns the path."""
    import torch
    import torch.nn as nn

    from .. import models
    from ..train.run import build_loaders
    from ..train.trainer import weights_payload
    from ..utils import seed_everything

    path = Path(path)
    seed_everything(cfg.train.seed)
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    loader, _ = build_loaders(data, torch.device("cpu"), seed=cfg.train.seed, channels_last=cfg.train.channels_last)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # the cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x, _, _ in loader.batches(0):
            model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights_payload(model.eval(), {"smoke": "random initialisation, BN statistics of the smoke data"}),
               path)
    return str(path)


def smoke_overrides(cfg: Config, *, steps: int = 2, images_per_class: int = 2, weights=None) -> dict:
    """The overrides that turn the resolved config ``cfg`` into its smoke run (module docstring): CPU,
    ``steps`` steps a training stage, tiny data, random weights in place of checkpoints.

    ``weights``: the folder for the random stand-ins of the checkpoints the config names
    (:func:`random_checkpoint`); required when it names one."""
    data = _shrunk_data(cfg.data, images_per_class)
    over: dict = {"train": {"max_steps": steps, "device": "cpu", "progress": False, "tensorboard": False},
                  "data": data}
    small = from_dict(DataConfig, deep_merge(dataclasses.asdict(cfg.data), data), "data.")

    made: list[str] = []

    def stand_in(what: str) -> str:  # one random checkpoint serves every checkpoint the config names
        if weights is None:
            raise ConfigError(f"the smoke run of {cfg.name} needs a folder for the random stand-in of its {what}")
        if not made:
            made.append(random_checkpoint(cfg, Path(weights) / "random-init.pt", small))
        return made[0]

    if cfg.train.init_from:
        over["train"]["init_from"] = stand_in("train.init_from")
    stages = {}
    base = dataclasses.asdict(cfg.data)
    for name, st in (cfg.stages or {}).items():
        if not isinstance(st, dict) or name not in TRAINING_STAGES:
            continue
        d = from_dict(DataConfig, deep_merge(base, st.get("data") or {}), f"stages.{name}.data.")
        stages[name] = {"data": _shrunk_data(d, images_per_class), "train": {"max_steps": steps}}
        if name == "pretrain" and st.get("init_from"):
            # the paper starts from a checkpoint: the same path (loaded, checked, recorded) with random weights
            stages[name]["init_from"] = stand_in("stages.pretrain.init_from")
        kd = st.get("kd")
        if isinstance(kd, dict) and kd.get("teacher"):
            stages[name]["kd"] = {"teacher": stand_in(f"stages.{name}.kd.teacher")}
    if stages:
        over["stages"] = stages
    if (cfg.method or {}).get("teacher"):  # BAR's distillation teacher
        over["method"] = {"teacher": stand_in("method.teacher")}
    return over


def paper_epochs(cfg: Config) -> dict:
    """The epochs each stage of the unmodified config ``cfg`` runs: ``{"train": E}`` for a dense config;
    for a pipeline ``pretrain`` (``"checkpoint"``, ``"random init"`` or epochs), ``learn`` (methods that
    learn) and ``finetune`` (epochs, or ``"off"``)."""
    from .. import methods
    from ..workflows import stages as st

    if is_dense(cfg):
        return {"train": cfg.train.epochs}
    out = {}
    pre = st.stage_config(cfg, "pretrain")
    if st.stage_options(cfg, "pretrain").get("init_from") or cfg.train.init_from:
        out["pretrain"] = "checkpoint"
    else:
        out["pretrain"] = pre.train.epochs if pre is not None else "random init"
    learn = st.stage_config(cfg, "learn")
    method = methods.get(cfg.method["name"])
    if method.learns and learn is not None:
        out["learn"] = learn.train.epochs if method.learn_trains else "scores only"
    ft = st.stage_config(cfg, "finetune")
    out["finetune"] = ft.train.epochs if ft is not None else "off"
    return out


def _error_line(e: BaseException) -> tuple[str, str]:
    """One line for an exception, and where (file:line of the innermost frame in the package) it came from."""
    msg = " ".join(str(e).split()) or "(no message)"
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if "prunelab" in frame.filename:
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            break
    return f"{type(e).__name__}: {msg[:300]}", where


def _nonfinite_evaluation(run: Path) -> dict | None:
    """The run's first epoch record whose test loss is not finite (``metrics.jsonl``), or None."""
    import math

    from ..runfiles import read_metrics

    for r in read_metrics(run):
        if "test_loss" in r:
            v = r["test_loss"]
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return r
    return None


def _forward_check(run: Path, dense: bool) -> dict:
    """Reload the run's saved result as ``prunelab eval`` does (``model.pt``, or ``compact/``/``final/``
    through :func:`~prunelab.pruning.result.load_result`) and pass the smoke's real test images through it.

    Checks: the outputs are (batch, 10); the accuracy equals the one the run recorded for the network it
    saved (the same images through the same weights: the reload rebuilds what was saved); the outputs are
    finite. Non-finite outputs pass only when the run's own evaluations were already non-finite before it
    saved (then the reload reproduced them, and ``note`` says so); otherwise they raise. Returns the
    reloaded network's kind and cost (a dynamic result's mean over the test images), and ``note``."""
    import torch

    from .. import methods  # noqa: F401  (registers the builder of dynamic and generated results)
    from .. import models
    from ..config import build, safe_load_yaml
    from ..counting import count
    from ..pruning.result import load_result
    from ..runfiles import read_record
    from ..train.run import build_loaders
    from ..train.trainer import load_weights
    from ..workflows.runs import final_result_dir

    cfg = build(safe_load_yaml((run / "config.yaml").read_text(), str(run / "config.yaml")))
    device = torch.device("cpu")
    _, ev = build_loaders(cfg.data, device, seed=cfg.train.seed, channels_last=cfg.train.channels_last)
    record = read_record(run / "result.json", "run")
    if dense:
        model = models.create(cfg.model.name, **cfg.model.kwargs)
        load_weights(model, run / "model.pt")
        c, kind = count(model), "dense"
        recorded = (record.get("final") or {}).get("test_acc")
    else:
        final = final_result_dir(run)
        if final is None:
            raise ConfigError(f"{run} holds no saved final result (compact/ or final/)")
        result = load_result(final, map_location=device)
        model, kind = result.module, result.kind
        c = result.cost(ev["test"])
        recorded = record.get("final_test_acc")
    mf = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=mf).eval()
    correct, n, finite, shape = 0, 0, True, None
    with torch.no_grad():
        for x, y, _ in ev["test"]:
            out = model(x)
            shape = list(out.shape)
            if tuple(out.shape) != (len(x), 10):  # CIFAR-10
                raise AssertionError(f"the reloaded {kind} network gives outputs of shape {tuple(out.shape)} for a "
                                     f"batch of {len(x)} images, expected {(len(x), 10)}")
            finite = finite and bool(torch.isfinite(out).all())
            correct, n = correct + int((out.argmax(1) == y).sum()), n + len(y)
    acc = correct / max(n, 1)
    if isinstance(recorded, (int, float)) and abs(acc - recorded) > 1e-9:
        raise AssertionError(f"the reloaded {kind} network's test accuracy {acc:.4f} differs from the {recorded:.4f} "
                             f"the run recorded for the network it saved: the reload does not rebuild it")
    note = None
    if not finite:
        bad = _nonfinite_evaluation(run)
        if bad is None:
            raise AssertionError(f"the reloaded {kind} network gives non-finite outputs on real test images, though "
                                 f"the run's own evaluations were finite")
        note = (f"non-finite outputs, as in the run's own evaluation from {bad.get('stage') or 'train'} epoch "
                f"{bad.get('epoch')} on (test loss {bad.get('test_loss')}): the recipe diverges in eval mode from the "
                f"random stand-in weights; the reload reproduces the saved network")
    return {"kind": kind, "params": float(c.params), "macs": float(c.macs), "output_shape": shape, "test_acc": acc,
            "note": note}


def _stages_run(run: Path, dense: bool) -> tuple[list[str], dict]:
    """The stages a run finished (``pipeline.json``; ``train`` for a dense run with ``model.pt``) and the
    optimisation steps each training stage took (its last ``metrics.jsonl`` record)."""
    from ..runfiles import read_metrics, read_record

    steps: dict = {}
    for rec in read_metrics(run):
        steps[rec.get("stage") or "train"] = rec.get("step")
    if dense:
        return (["train"] if (run / "model.pt").exists() else []), steps
    p = run / "pipeline.json"
    done = read_record(p, "pipeline").get("done", []) if p.exists() else []
    return [str(s) for s in done], steps


def smoke_one(name: str, out, *, steps: int = 2, images_per_class: int = 2, quiet: bool = True,
              scale: str = "paper") -> dict:
    """The smoke run of one config into the run folder ``out`` (see :func:`smoke_paper`); never raises."""
    from ..workflows import run_pipeline, train

    out = Path(out)
    row = {"name": name, "model": None, "method": None, "stages": [], "steps": {}, "params": None, "macs": None,
           "result_kind": None, "paper_epochs": {}, "seconds": 0.0, "status": "failed", "error": None,
           "where": None, "note": None, "out": str(out)}
    t0 = time.time()
    dense = True
    try:
        cfg0 = load_config(name, scale)
        dense = is_dense(cfg0)
        row["model"] = cfg0.model.name
        row["method"] = None if dense else cfg0.method["name"]
        row["paper_epochs"] = paper_epochs(cfg0)
        over = smoke_overrides(cfg0, steps=steps, images_per_class=images_per_class,
                               weights=out.parent / "_weights" / name)
        cfg = load_config(name, scale, overrides=over)
        if dense:
            train(cfg, out, force=True, quiet=quiet)
        else:
            run_pipeline(cfg, out, force=True, quiet=quiet)
        check = _forward_check(out, dense)
        row.update(params=check["params"], macs=check["macs"], result_kind=check["kind"],
                   output_shape=check["output_shape"], note=check["note"], status="ok")
    except Exception as e:  # noqa: BLE001  (a failing config is reported in its row; the others go on)
        row["error"], row["where"] = _error_line(e)
    finally:
        try:
            done, took = _stages_run(out, dense)
            row["stages"] = done + (["reload"] if row["status"] == "ok" else [])
            row["steps"] = took
        except Exception:  # noqa: BLE001  (a run folder too damaged to read: the error above says why)
            pass
        row["seconds"] = round(time.time() - t0, 2)
    return row


def smoke_paper(names=None, out=None, *, steps: int = 2, images_per_class: int = 2, quiet: bool = True) -> list[dict]:
    """Run every bundled config (or ``names``) at ``paper`` scale for ``steps`` steps a stage on CPU,
    through its whole pipeline, and reload and run what it saved (module docstring).

    Args:
        names: config names (default: every ``prunelab/configs/*.yaml``); unknown names are refused
            before anything runs.
        out: folder for the run folders (``out/<name>``, an earlier smoke run there moved aside) and
            ``out/smoke.json`` (the rows); default a temporary folder, deleted afterwards.
        steps: optimisation steps of every training stage (>= 1); with one step an epoch, also the
            number of epochs each stage completes, evaluation and end-of-epoch code included.
        images_per_class: real CIFAR-10 images per class, for training and for testing (>= 1; a
            config whose held-out split keeps a per-class validation subset needs 2).
        quiet: no progress output from the runs.

    Returns:
        One row per config, in order: ``name``, ``model``, ``method`` (None: dense), ``stages`` (the
        stages finished, then ``reload`` once the reloaded network passed its forward check),
        ``steps`` (the steps each training stage took), ``params`` and ``macs`` of the reloaded result
        (a dynamic result's mean over the test images), ``result_kind``, ``paper_epochs`` (what each
        stage runs in the unmodified paper config, :func:`paper_epochs`), ``seconds``, ``status``
        (``ok`` or ``failed``) with ``error`` (one line) and ``where`` (file:line) on failure, ``note``
        (non-finite outputs the run itself produced, see :func:`_forward_check`), ``out``. A failing
        config never stops the others.
    """
    from ..utils import to_jsonable, write_json

    names = list(config_names() if names is None else names)
    known = config_names()
    for n in names:
        if n not in known:
            raise ConfigError(f"no bundled config {n!r}.{suggest(n, known)} Configs: {', '.join(known)}")
    if steps < 1 or images_per_class < 1:
        raise ConfigError(f"the smoke run needs steps >= 1 and images_per_class >= 1, got {steps} and "
                          f"{images_per_class}")
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="prunelab-smoke-")
        root = Path(tmp.name)
    else:
        root = Path(out)
    try:
        rows = []
        for n in names:
            rows.append(smoke_one(n, root / n, steps=steps, images_per_class=images_per_class, quiet=quiet))
            if out is not None:
                write_json(root / "smoke.json", to_jsonable({"steps": steps, "images_per_class": images_per_class,
                                                             "rows": rows}))
        return rows
    finally:
        if tmp is not None:
            tmp.cleanup()


def _epochs_text(e: dict) -> str:
    return " ".join(f"{k}={'ckpt' if v == 'checkpoint' else v}" for k, v in e.items())


def format_table(rows: list[dict]) -> str:
    """The rows as a text table (config, method, stages, steps per stage, seconds, status), the paper
    epochs beside them and each failure's error line below."""
    head = ("config", "method", "stages", "paper epochs", "params", "seconds", "status")
    body = [(r["name"], r["method"] or "(dense)", ",".join(r["stages"]) or "-", _epochs_text(r["paper_epochs"]),
             f"{r['params'] / 1e6:.2f} M" if r.get("params") is not None else "-", f"{r['seconds']:.1f}",
             r["status"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['name']}: {r['error']}" + (f" ({r['where']})" if r.get("where") else ""))
        elif r.get("note"):
            lines.append(f"{r['name']}: note: {r['note']}")
    return "\n".join(lines)


def smoke_command(args) -> int:
    """``prunelab experiment all --scale paper --smoke [--out DIR] [--parts CONFIGS] [--results FILE]``:
    print the table of :func:`smoke_paper`; exit code 1 if a config failed, else 0."""
    import sys

    from ..utils import to_jsonable, write_json

    if not getattr(args, "smoke", False):
        raise ConfigError("experiment all is the smoke run of every bundled config; add --smoke "
                          "(prunelab experiment all --scale paper --smoke)")
    if args.name != "all":
        raise ConfigError(f"--smoke runs the bundled configs, not a study: use `prunelab experiment all --smoke` "
                          f"(--parts picks configs), not {args.name!r}")
    if args.scale not in (None, "paper"):
        raise ConfigError(f"--smoke runs the paper-scale configs; use --scale paper (got --scale {args.scale})")
    if getattr(args, "collect", False):
        raise ConfigError("--collect aggregates a study's finished sub-runs; the smoke run has none (drop it)")
    from ..utils import check_output_file, check_path

    names = None
    if args.parts:
        names = [p.strip() for p in args.parts.split(",") if p.strip()]
    if args.out:
        check_path(args.out, "--out")
    if args.results:
        check_output_file(args.results, "--results")
    rows = smoke_paper(names, args.out)
    print(format_table(rows))
    if args.results:
        write_json(args.results, to_jsonable({"rows": rows}))
    sys.stdout.flush()
    return 1 if any(r["status"] != "ok" for r in rows) else 0
