"""Commands on finished run directories: ``prunelab info``, ``prunelab eval``, ``prunelab compact``."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, PrunelabError, RunDirError
from ..runfiles import read_metrics, read_record, summed_epoch_time

FINAL_DIRS = ("compact", "final")  # a static result's folder, a dynamic or generated result's folder


def _check(path) -> Path:
    p = Path(path)
    try:
        p.is_dir()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise RunDirError(f"{str(p)[:60]}... cannot be a run directory ({getattr(e, 'strerror', None) or e}); pass "
                          f"the folder given to --out") from None
    if not p.is_dir() or not (p / "config.yaml").exists():
        raise RunDirError(f"{p} is not a prunelab run directory (no config.yaml); pass the folder given to --out")
    return p


def _config(p: Path) -> dict:
    """The run's ``config.yaml`` as a mapping with a model name, or one line saying it is damaged."""
    from ..config import safe_load_yaml

    f = p / "config.yaml"
    try:
        text = f.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        raise RunDirError(f"{f} is not readable text; restore it or rerun the run with --force") from None
    try:
        cfg = safe_load_yaml(text, str(f))
    except ConfigError as e:
        raise RunDirError(f"{e}; restore it or rerun the run with --force") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg["model"].get("name"), str):
        raise RunDirError(f"{f} is not a prunelab run config (no model.name); restore it or rerun with --force")
    return cfg


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def final_result_dir(run_dir) -> Path | None:
    """The folder of a pruning run's final (fine-tuned) result, or None."""
    for name in FINAL_DIRS:
        if (Path(run_dir) / name / "plan.json").exists():
            return Path(run_dir) / name
    return None


def run_info(path) -> str:
    """A human-readable summary: what ran, how far it got, and its results."""
    p = _check(path)
    cfg = _config(p)
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
        acc = f", test {_pct(last['test_acc'])}" if "test_acc" in last else ""
        loss = last.get("train_loss")
        loss = f"{loss:.3f}" if isinstance(loss, (int, float)) and not isinstance(loss, bool) else "n/a"
        lines.append(f"  {stage}: {len(rows)} epoch(s) logged, last train loss {loss}{acc}")
    if (p / "pipeline.json").exists():
        done = read_record(p / "pipeline.json", "pipeline").get("done")
        if not isinstance(done, list):
            raise RunDirError(f"{p / 'pipeline.json'} is damaged (no list of finished stages); restore it or rerun "
                              f"with --force")
        lines.append(f"  finished stages: {', '.join(map(str, done))}")
    if (p / "result.json").exists():
        r = read_record(p / "result.json", "run")
        num = (int, float)
        if isinstance(r.get("summary"), str):
            lines.append(f"  result ({r.get('result_kind', 'static')}): {r['summary']}")
        elif isinstance(r.get("final"), dict):
            # older result files lack train_time_s; the metrics log has every epoch's time
            train_s = r.get("train_time_s", summed_epoch_time(metrics))
            macs, wall = r.get("macs"), r.get("wall_time_s")
            lines.append(f"  result: test accuracy {_pct(r['final'].get('test_acc'))}, "
                         + (f"{macs / 1e6:.2f} M MACs, " if isinstance(macs, num) else "")
                         + (f"{train_s / 60:.1f} min of epochs " if isinstance(train_s, num) else "")
                         + (f"({wall / 60:.1f} min in the last process)" if isinstance(wall, num) else ""))
        else:
            lines.append("  result: result.json holds no summary (written by another version?)")
    else:
        ck = sorted(q.name for q in p.glob("checkpoint*.pt"))
        lines.append(f"  not finished{'; resumable from ' + ', '.join(ck) if ck else ''} (prunelab ... --resume)")
    return "\n".join(lines)


def evaluate_run(path) -> dict:
    """Test accuracy and cost of a run's final model: dense ``model.pt``, or a pruning run's final
    result of any kind (a dynamic result's cost is its mean over the test images)."""
    import torch

    from .. import methods  # noqa: F401  (registers the builder of dynamic and generated results)
    from .. import models
    from ..config import build
    from ..counting import count
    from ..pruning.result import load_result
    from ..train.run import build_loaders
    from ..train.trainer import evaluate, load_weights, resolve_device

    p = _check(path)
    raw = _config(p)
    try:
        cfg = build(raw)
    except PrunelabError as e:
        raise RunDirError(f"{p / 'config.yaml'}: {e}") from None
    device = resolve_device("auto")
    _, ev = build_loaders(cfg.data, device, seed=cfg.train.seed, channels_last=cfg.train.channels_last)
    final = final_result_dir(p)
    kind = "dense"
    if final is not None:
        result = load_result(final, map_location=device)
        model, kind = result.module, result.kind
        macs = result.cost(ev["test"]).macs
        overhead = result.report.extra.get("predictor_macs")
    elif (p / "model.pt").exists():
        model = models.create(cfg.model.name, **cfg.model.kwargs)
        load_weights(model, p / "model.pt")
        macs = count(model).macs
    else:
        raise RunDirError(f"{p} has no final model yet (model.pt, compact/ or final/); finish it with --resume")
    mf = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=mf)
    r = evaluate(model, ev["test"])
    out = {**r, "macs": macs, "kind": kind}
    if final is not None and overhead:
        out["macs_with_predictors"] = macs + overhead
    return out


def _prepare_out(out: Path, force: bool, quiet: bool) -> None:
    """Check the folder for a compact model before writing it (one line naming it and the fix): it can
    be made and written, and a compact model already there is moved aside only with ``force`` (never
    the current folder, one above it or the package's)."""
    from ..errors import PathError
    from ..utils import check_path, force_refusal, move_aside

    check_path(out, "--out", fix="choose another --out for plan.json and weights.pt")
    if (out / "plan.json").exists() or (out / "weights.pt").exists():
        if not force:
            raise ConfigError(f"{out} already holds a compact model (plan.json / weights.pt); pass --force to move "
                              f"it aside, or choose another --out")
        why = force_refusal(out)
        if why:
            raise PathError(f"--force would move {out} aside, and it is {why}; give --out a folder of the compact "
                            f"model's own")
        backup = move_aside(out, what="compact model")
        if not quiet:
            print(f"--force: moved the existing compact model to {backup}")


def compact_plan(plan, weights, out, *, force: bool = False, quiet: bool = True) -> Path:
    """Compact the dense checkpoint ``weights`` to the structure plan file ``plan`` (``prunelab compact
    PLAN --weights CKPT --out DIR``; the explorer notebook exports such plans)."""
    from .. import models
    from ..pruning.compact import compact, save_compact
    from ..pruning.structure import Structure
    from ..train.trainer import load_weights

    if not weights:
        raise ConfigError(f"{plan} is a plan file: give the dense checkpoint to compact with --weights "
                          f"(e.g. runs/resnet20-30ep/model.pt)")
    if not out:
        raise ConfigError("compacting a plan file needs --out DIR for the compact model")
    structure = Structure.load(plan)
    net = models.create(structure.model, **structure.model_kwargs)
    load_weights(net, weights, fix=f"the plan {plan} is for {structure.model}: give --weights a {structure.model} "
                                   f"checkpoint")
    structure.check(models.describe(net))
    out = Path(out)
    _prepare_out(out, force, quiet)
    save_compact(compact(net, structure), structure, out)
    if not quiet and structure.meta.get("alive_from"):
        print(f"note: {structure.meta['alive_from']}")
    return out


def compact_run(run_dir, out=None, *, force: bool = False, quiet: bool = True) -> Path:
    """Write the compact model of a finished pruning run (``prunelab compact RUN [--out DIR]``).

    A ``DIR`` that already holds a plan or weights is refused; ``force`` moves it aside first (to a
    unique ``DIR.old-<time>``), as ``train --force`` does with a run.
    """
    from .. import methods  # noqa: F401
    from ..pruning.result import GeneratedResult, StaticResult, load_result
    from ..utils import check_path

    run_dir = Path(run_dir)
    final = final_result_dir(run_dir)
    if final is None:
        if not (run_dir / "pipeline.json").exists():
            raise ConfigError(f"{run_dir} is not a pruning run (no pipeline.json); run `prunelab prune` first")
        raise ConfigError(f"{run_dir} has no final result yet; finish it with prunelab prune --resume")
    result = load_result(final)
    if isinstance(result, GeneratedResult):
        result = result.to_static()
    if not isinstance(result, StaticResult):
        raise ConfigError(f"{run_dir} holds a {result.kind} result (per-instance masks): it has no single compact "
                          f"network; evaluate it with prunelab eval")
    out = Path(out) if out else run_dir / "compact"
    check_path(out, "--out", writable=False, fix="choose another --out for plan.json and weights.pt")
    if out.resolve() == final.resolve():
        return out
    _prepare_out(out, force, quiet)
    result.save(out)
    return out
