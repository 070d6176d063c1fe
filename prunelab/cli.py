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

Every command takes ``--import MODULE`` (repeatable, before or after the command's name): a module name
or a path to a .py file imported first, so that the models, methods and studies it registers are
usable (:mod:`prunelab.plugins`; installed packages' ``prunelab.plugins`` entry points load by
themselves). ``train`` and ``prune`` record the imports in the run's ``config.yaml`` and plans, so
``eval``, ``info``, ``compact`` and the explorer reload the run without them.

Bad input (unknown names, invalid numbers, missing data, incompatible checkpoints, unusable paths,
a full disk) prints one line and exits with code 2; a run folder is checked before it is created.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from .errors import ConfigError, PrunelabError


class _Parser(argparse.ArgumentParser):
    """argparse with the package's error style: one line (not the usage block) and where help is."""

    def error(self, message):
        cmd = self.prog.removeprefix("prunelab").strip()
        self.exit(2, f"prunelab: error: {cmd + ': ' if cmd else ''}{message}; see `{self.prog} --help`\n")


def _count(text: str) -> int:
    """argparse type of ``--batch``, ``--threads``, ``--repeats``: a whole number >= 1 (what fits the
    machine is checked where it is known, before measuring)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def _add_run_args(p):
    p.add_argument("config", help="config file, or the name of a bundled config (prunelab list configs)")
    p.add_argument("--scale", choices=("ci", "cpu", "paper"),
                   help="scale block to apply (default: --set scale, else the file's scale:, else $PRUNELAB_SCALE, "
                        "else cpu)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=30 (repeatable)")
    p.add_argument("--out", help="run directory (default runs/<name>-<scale>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    g.add_argument("--force", action="store_true", help="move an existing run in --out aside and start over")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="prunelab", description="Structured pruning research: train, prune, count, compact.")
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
    p.add_argument("--smoke", action="store_true", help="with the name all: every bundled config at paper scale, a "
                   "few steps a stage on CPU, reloaded and run (--parts picks configs); exit 1 if one fails")
    p.add_argument("--plan", action="store_true", help="print the sub-runs, their epochs, needs and state; run nothing")
    p.add_argument("--dry-run", action="store_true",
                   help="list every sub-run with its estimated GPU-hours and the total; run nothing")
    p.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="where sub-runs execute: local processes (default), a Ray cluster, Slurm jobs (submitit)")
    p.add_argument("--workers", type=_count, help="sub-runs at once (local: default one per GPU, else 1)")
    p.add_argument("--shard", metavar="K/N", help="run only shard K of N of the sub-runs (machines sharing a disk)")
    p.add_argument("--executor-option", dest="executor_options", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option (ray: address; slurm: partition, time_min, gpus_per_task, cpus_per_task, "
                        "mem_gb, options_file)")
    p = sub.add_parser("latency-table", help="measure (or show the cached) per-layer latency table of a model")
    p.add_argument("model")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="ARG=VALUE", help="model argument")
    p.add_argument("--batch", type=_count, default=1, help="images per inference call (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=_count, help="CPU threads (default: torch's; at most the CPUs usable here)")
    p.add_argument("--repeats", type=_count, default=5, help="interleaved rounds; the minimum is kept (default 5)")
    p.add_argument("--force", action="store_true", help="measure again even if a cached table exists")
    p = sub.add_parser("list", help="list models, methods or bundled configs")
    p.add_argument("what", nargs="?", choices=("models", "methods", "configs"), default="models")
    # the same option on the main parser and on every command, under two names: a subparser's default
    # would otherwise overwrite what was given before the command's name
    _add_import(ap, "imports_before")
    for p in sub.choices.values():
        _add_import(p, "imports")
    return ap


def _add_import(p, dest: str) -> None:
    p.add_argument("--import", dest=dest, action="append", default=[], metavar="MODULE",
                   help="import a module (dotted name) or a .py file first, so the models, methods and studies it "
                        "registers are usable (repeatable)")


def _scale(args):
    from .config import default_scale

    return args.scale or default_scale()


def _run_config(args):
    """The config of ``train``/``prune``: ``--scale`` wins, ``--set scale=X`` and the file's ``scale:``
    come next, ``$PRUNELAB_SCALE`` (or cpu) last."""
    from .config import check_set_conflicts, default_scale, load_config

    check_set_conflicts(args.sets)
    cfg = load_config(args.config, args.scale, args.sets, default_scale=None if args.scale else default_scale())
    if args.imports:  # recorded in config.yaml: eval, compact and resumed runs import them again
        cfg.model.imports = list(dict.fromkeys([*cfg.model.imports, *args.imports]))
    return cfg


def _run_out(args, cfg) -> Path:
    """The run folder (``--out``, default ``runs/<name>-<scale>``), checked before anything is written:
    it can be made, ``--resume`` finds a run there, ``--force`` moves only a run of its own aside."""
    from .train.rundir import check_output_dir
    from .train.run import default_out

    out = Path(args.out) if args.out else default_out(cfg)
    return check_output_dir(out, force=args.force, resume=args.resume)


def cmd_train(args) -> int:
    from .config import scale_caveat
    from .train.run import train

    cfg = _run_config(args)
    out = _run_out(args, cfg)
    ignored = [k for k in ("method", "budget", "stages") if getattr(cfg, k)]
    if ignored:
        print(f"prunelab: warning: {args.config} is a pruning config; `prunelab train` trains the dense model and "
              f"ignores its {', '.join(ignored)} section(s): use `prunelab prune {args.config}` to prune",
              file=sys.stderr)
    res = train(cfg, out, resume=args.resume, force=args.force)
    f = res["final"]
    took = f"{res['train_time_s'] / 60:.1f} min of epochs"
    if res.get("resumed"):
        took += f" over all resumed processes, {res['wall_time_s'] / 60:.1f} min in this one"
    print(f"{cfg.name} ({cfg.scale}): test accuracy {100 * f.get('test_acc', float('nan')):.2f}% after "
          f"{res['epochs']} epochs, {took}; {res['macs'] / 1e6:.2f} M MACs{scale_caveat(cfg.scale)}")
    return 0


def cmd_prune(args) -> int:
    from .workflows.pipeline import run_pipeline

    cfg = _run_config(args)
    res = run_pipeline(cfg, _run_out(args, cfg), resume=args.resume, force=args.force)
    print(res["summary"])
    return 0


def cmd_latency_table(args) -> int:
    import time

    import torch

    from . import models
    from .config import parse_set
    from .errors import ConfigError
    from .pruning.latency import latency_table

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


def _parts(text: str | None) -> list[str] | None:
    """``--parts a,b`` as names (None: all parts); a value that names no part is refused."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        from .errors import ConfigError

        raise ConfigError(f"--parts {text!r} names no part; give comma-separated part names, or leave --parts out "
                          f"to run them all")
    return parts


def cmd_experiment(args) -> int:
    if args.smoke or args.name == "all":  # the paper-scale smoke run of the bundled configs
        from .experiments.smoke import smoke_command
        return smoke_command(args)
    from .experiments import results_path, run
    from .utils import check_output_file, check_path

    parts = _parts(args.parts)
    scale = _scale(args)
    # the folders and file a study writes, checked before it runs (a --collect writes only the results)
    check_path(args.out or f"runs/{args.name}-{scale}", "--out", writable=not args.collect)
    if args.results:
        check_output_file(args.results, "--results")
    else:
        check_output_file(results_path(args.name, scale), "the results file", fix="give --results FILE elsewhere")
    if args.plan or args.dry_run:
        from .experiments.estimate import dry_run_table
        from .experiments.runner import Runner, plan_table

        if args.dry_run:
            print(dry_run_table(args.name, scale, parts=parts))
        else:
            print(plan_table(Runner(args.name, scale, args.out, parts=parts, results=args.results, quiet=True).plan()))
        return 0
    executor = None
    if args.executor != "local" or args.workers or args.executor_options:
        from .experiments.executors import make_executor

        options = _key_values(args.executor_options)
        if args.executor == "slurm":  # submitit's job files beside the sub-runs (a shared filesystem)
            options.setdefault("folder", str(Path(args.out or f"runs/{args.name}-{scale}") / "slurm"))
        executor = make_executor(args.executor, workers=args.workers, options=options)
    run(args.name, scale, args.out, parts=parts, results=args.results, collect=args.collect, executor=executor,
        shard=args.shard)
    return 0


def _key_values(items) -> dict:
    """``["k=v", ...]`` -> ``{k: v}`` with numbers, booleans and null parsed as YAML."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--executor-option takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


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
# path errors the checks before a command should have caught; a path that changed while the command
# ran still gets one line naming it
_PATH_ERRORS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST}


def _again(cmd: str) -> str:
    """How to go on once the cause is fixed: train and prune continue with --resume, the others
    have no --resume and are simply run again."""
    if cmd in ("train", "prune"):
        return "continue with --resume (what was saved before is intact: files are written whole or not at all)"
    if cmd == "experiment":
        return "rerun the same command (finished sub-runs are reused)"
    return "rerun the command"


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, see _Parser) or --help
        return e.code
    try:
        from .plugins import export_to_children, load_plugins

        args.imports = load_plugins([*args.imports_before, *args.imports])
        if args.imports:
            export_to_children(args.imports)  # a study's workers run in processes of their own
        return COMMANDS[args.cmd](args)
    except PrunelabError as e:
        print(f"prunelab: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in _DISK_ERRORS:
            where = f" writing {e.filename}" if e.filename else ""
            print(f"prunelab: error: {_DISK_ERRORS[e.errno]}{where}; make room (or write access) and "
                  f"{_again(args.cmd)}", file=sys.stderr)
            return 2
        if e.errno in _PATH_ERRORS and e.filename:
            name = str(e.filename)
            name = name if len(name) <= 80 else name[:60] + "..."
            print(f"prunelab: error: {(e.strerror or '').lower()}: {name}; fix that path (or give another) and run "
                  f"the command again", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"prunelab: interrupted; {_again(args.cmd)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
