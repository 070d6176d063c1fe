"""``prunelab`` command line.

    prunelab train CONFIG [--scale S] [--set key=value ...] [--out DIR] [--resume | --force]
    prunelab prune CONFIG [same options]          pretrain -> learn -> hard-prune -> fine-tune
    prunelab eval RUN                             test accuracy of a run's final weights
    prunelab info RUN                             config, progress and results of a run
    prunelab count MODEL [--set k=v] [--structure plan.json] [--residual mixed|regular] [--count-pool]
    prunelab compact RUN [--out DIR]              write the compact model and its plan
    prunelab latency-table MODEL [--batch N] [--device cpu|cuda] [--threads N]   measured layer latencies
    prunelab experiment bar|pfs [--scale S]       a supplement study; results/<name>_<scale>.json
    prunelab list [models|methods|configs]

Bad input (unknown names, invalid numbers, missing data, incompatible checkpoints) prints one line
and exits with code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from .errors import PrunelabError


def _add_run_args(p):
    p.add_argument("config", help="config file, or the name of a bundled config (prunelab list configs)")
    p.add_argument("--scale", choices=("ci", "cpu", "paper"), help="scale block to apply (default: $PRUNELAB_SCALE or the file's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=30 (repeatable)")
    p.add_argument("--out", help="run directory (default runs/<name>-<scale>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    g.add_argument("--force", action="store_true", help="move an existing run in --out aside and start over")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prunelab", description="Structured pruning research: train, prune, count, compact.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train a dense model from a config")
    _add_run_args(p)
    p = sub.add_parser("prune", help="run a pruning pipeline (pretrain, learn, prune, fine-tune)")
    _add_run_args(p)
    p = sub.add_parser("eval", help="evaluate a run's final model on the test set")
    p.add_argument("run")
    p = sub.add_parser("info", help="summarise a run directory")
    p.add_argument("run")
    p = sub.add_parser("count", help="MACs, FLOPs, params and activation volume of a model")
    p.add_argument("model")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="ARG=VALUE", help="model argument")
    p.add_argument("--structure", help="plan.json of a pruned structure")
    p.add_argument("--residual", choices=("mixed", "regular"), default="mixed")
    p.add_argument("--count-pool", action="store_true", help="count average-pool modules (PFS)")
    p.add_argument("--per-layer", action="store_true", help="print the per-op breakdown")
    p = sub.add_parser("compact", help="write the physically pruned model of a pruning run (or of a plan file)")
    p.add_argument("run", help="a pruning run directory, or a structure plan file (.json) with --weights")
    p.add_argument("--weights", help="with a plan file: the dense checkpoint (model.pt or a run directory) to compact")
    p.add_argument("--out", help="folder for plan.json and weights (default RUN/compact; with a plan: required)")
    p.add_argument("--force", action="store_true", help="move a compact model already in --out aside first")
    p = sub.add_parser("experiment", help="run a supplement study (many runs, one cached results file)")
    p.add_argument("name", help="bar or pfs")
    p.add_argument("--scale", choices=("ci", "cpu", "paper"))
    p.add_argument("--out", help="folder for the sub-runs (default runs/<name>-<scale>); finished sub-runs are reused")
    p.add_argument("--parts", help="comma-separated parts to run (default: all)")
    p.add_argument("--results", help="results file (default results/<name>_<scale>.json)")
    p.add_argument("--resume", action="store_true", help="accepted for symmetry: experiments always continue")
    p.add_argument("--collect", action="store_true",
                   help="start no new training: aggregate the sub-runs already finished (partial results, marked so)")
    p = sub.add_parser("latency-table", help="measure (or show the cached) per-layer latency table of a model")
    p.add_argument("model")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="ARG=VALUE", help="model argument")
    p.add_argument("--batch", type=int, default=1, help="images per inference call (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the minimum is kept (default 5)")
    p.add_argument("--force", action="store_true", help="measure again even if a cached table exists")
    p = sub.add_parser("list", help="list models, methods or bundled configs")
    p.add_argument("what", nargs="?", choices=("models", "methods", "configs"), default="models")
    return ap


def _scale(args):
    from .config import check_set_conflicts, default_scale

    check_set_conflicts(getattr(args, "sets", ()))
    return args.scale or default_scale()


def cmd_train(args) -> int:
    from .config import load_config
    from .train.run import train

    cfg = load_config(args.config, _scale(args), args.sets)
    ignored = [k for k in ("method", "budget", "stages") if getattr(cfg, k)]
    if ignored:
        print(f"prunelab: warning: {args.config} is a pruning config; `prunelab train` trains the dense model and "
              f"ignores its {', '.join(ignored)} section(s): use `prunelab prune {args.config}` to prune",
              file=sys.stderr)
    res = train(cfg, args.out, resume=args.resume, force=args.force)
    f = res["final"]
    took = f"{res['train_time_s'] / 60:.1f} min of epochs"
    if res.get("resumed"):
        took += f" over all resumed processes, {res['wall_time_s'] / 60:.1f} min in this one"
    print(f"{cfg.name} ({cfg.scale}): test accuracy {100 * f.get('test_acc', float('nan')):.2f}% after "
          f"{res['epochs']} epochs, {took}; {res['macs'] / 1e6:.2f} M MACs")
    return 0


def cmd_prune(args) -> int:
    from .config import load_config
    from .workflows.pipeline import run_pipeline

    cfg = load_config(args.config, _scale(args), args.sets)
    res = run_pipeline(cfg, args.out, resume=args.resume, force=args.force)
    print(res["summary"])
    return 0


def cmd_latency_table(args) -> int:
    import time

    import torch

    from . import models
    from .config import parse_set
    from .errors import ConfigError
    from .pruning.latency import latency_table

    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise ConfigError(f"--device {args.device} is not available here; use --device cpu")
    kwargs = parse_set(args.sets)
    models.create(args.model, **kwargs)  # unknown model or arguments: one line
    t0 = time.time()
    table = latency_table(args.model, kwargs, batch=args.batch, device=args.device, threads=args.threads,
                          force=args.force, repeats=args.repeats, say=print)
    took = time.time() - t0
    k = table.key
    print(f"{args.model} {kwargs or ''} at batch {k['batch']} on {k['device']} ({k['threads']} threads, torch "
          f"{k['torch']}): dense {1e3 * table.full_seconds:.3f} ms per call, of which the {len(table.groups)} "
          f"prunable groups {1e3 * (table.full_seconds - table.base_seconds):.3f} ms")
    for name, g in table.groups.items():
        half = table.group_seconds(name, g["widths"][-1] / 2)
        print(f"  {name:<16} {g['widths'][-1]:>4} ch: {1e6 * g['seconds'][-1]:9.1f} us full, {1e6 * half:9.1f} us at "
              f"half width ({len(g['widths'])} widths measured)")
    how = (f"measured in {table.meta.get('seconds_to_measure', took):.0f} s" if took > 1 else "read from the cache")
    print(f"table {how}: {table.meta.get('path') or ''}")
    return 0


def cmd_eval(args) -> int:
    from .workflows.runs import evaluate_run

    r = evaluate_run(args.run)
    mean = " (mean over the test images)" if r["kind"] == "dynamic" else ""
    if "macs_with_predictors" in r:
        mean += f", {r['macs_with_predictors'] / 1e6:.2f} M with the predictors"
    print(f"{args.run}: test accuracy {100 * r['acc']:.2f}% (loss {r['loss']:.4f}) on {r['n']} images; "
          f"{r['macs'] / 1e6:.2f} M MACs{mean} [{r['kind']} model]")
    return 0


def cmd_info(args) -> int:
    from .workflows.runs import run_info

    print(run_info(args.run))
    return 0


def cmd_count(args) -> int:
    from . import models
    from .config import parse_set
    from .counting import count

    kwargs = parse_set(args.sets)
    model = models.create(args.model, **kwargs)
    structure = None
    if args.structure:
        from .pruning.structure import Structure

        structure = Structure.load(args.structure, models.describe(model))  # validated, errors name the file
    c = count(model, structure, residual=args.residual, count_pool=args.count_pool)
    print(f"{args.model}{' ' + json.dumps(kwargs) if kwargs else ''}: {c}")
    if args.per_layer:
        for r in c.per_op:
            print(f"  {r['name']:<32} {r['kind']:<6} {r['n_in']:>5} -> {r['n_out']:<5} {r['macs'] / 1e6:>9.3f} M MACs")
    return 0


def cmd_compact(args) -> int:
    from .workflows.runs import compact_plan, compact_run

    if Path(args.run).is_file():
        out = compact_plan(args.run, args.weights, args.out, force=args.force, quiet=False)
    else:
        if args.weights:
            from .errors import ConfigError

            raise ConfigError("--weights goes with a plan file; a run directory compacts its own weights")
        out = compact_run(args.run, args.out, force=args.force, quiet=False)
    print(f"compact model written to {out}")
    return 0


def cmd_experiment(args) -> int:
    from .experiments import run

    parts = args.parts.split(",") if args.parts else None
    run(args.name, _scale(args), args.out, parts=parts, results=args.results, collect=args.collect)
    return 0


def cmd_list(args) -> int:
    if args.what == "models":
        from .models import list_models

        print("\n".join(list_models()))
    elif args.what == "methods":
        from .methods import list_methods

        print("\n".join(list_methods()))
    else:
        from .config import CONFIG_DIR

        print("\n".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))))
    return 0


COMMANDS = {"train": cmd_train, "prune": cmd_prune, "eval": cmd_eval, "info": cmd_info, "count": cmd_count,
            "compact": cmd_compact, "experiment": cmd_experiment, "list": cmd_list,
            "latency-table": cmd_latency_table}


_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except PrunelabError as e:
        print(f"prunelab: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in _DISK_ERRORS:
            where = f" writing {e.filename}" if e.filename else ""
            print(f"prunelab: error: {_DISK_ERRORS[e.errno]}{where}; make room (or write access) and continue with "
                  f"--resume (what was saved before is intact: files are written whole or not at all)",
                  file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("prunelab: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
