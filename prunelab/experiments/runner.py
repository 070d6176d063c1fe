"""The study runner: a study is a registered, declarative plan of sub-runs; one runner executes any plan.

A study (``@register_study``) lists its sub-runs for a scale (:class:`SubRun`: a name, a kind — dense
``train``, pruning ``pipeline`` or an ``iterative`` shrink/retrain chain —, a config built from what it
needs, small JSON-able ``options`` for what a config does not hold, and the sub-runs it needs first)
and an ``aggregate`` that turns their records into the results file. The runner

* resolves every sub-run in order: **done** (its run directory finished; summarised into a small
  record), **reused** (no run directory, but the committed results hold a record made with the same
  fingerprint — also on a fresh machine), **ready** (its needs are met: it is executed), **waiting** (a
  sub-run it needs is missing), **running** (another process holds its run directory) or **failed**
  (its log is named);
* executes the ready ones on an executor (:mod:`.executors`: in this process, a local process pool with
  one GPU or a share of the CPU threads per worker, Ray or Slurm through :mod:`.engines`), as many at
  once as the executor has slots, and resolves again as each finishes, so dependencies are respected;
* writes the results (with every sub-run's record and fingerprint under ``"subruns"``, what is missing,
  and the provenance fingerprints) through :func:`~prunelab.experiments.write_results`; the numpy
  arrays a record carries under ``"arrays"`` go to the ``.npz`` beside that file (key
  ``<SubRun.arrays>/<name>``), so that they too are reused on a machine without the run directory.

Fingerprints name a sub-run by its settings, as OpenLTH names runs by a hash of their hyper-parameters
(facebookresearch/open_lth@2ce732f, ``foundations/desc.py``): the sha256 of its resolved config (paths,
progress bars, device and thread settings left out), of the code of the method it trains, and of the
fingerprints of the sub-runs it needs (and, where given, of its ``options`` without the input paths of
:data:`NEUTRAL_OPTIONS`; for an ``iterative`` chain, of the code of its shrink rules). A change anywhere
in that chain means a new sub-run, never a silently reused stale one.

``--shard k/N`` (the engine-free way to share a study between N machines on one filesystem): sub-run
number *i* of the plan (in plan order) belongs to shard ``i mod N + 1``; each shard runs only its own
ready sub-runs and reports the others as missing; rerun the shards (or ``--collect``) until complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from ..config import scale_caveat
from ..errors import ConfigError, UnknownNameError
from ..workflows.subruns import is_done
from . import REPO_ROOT, check_parts, results_path, write_results
from .tasks import Task, TaskFailed

STUDIES: dict[str, "Study"] = {}

# config keys that do not change what a sub-run computes (where it runs, how it reports, where its
# inputs lie: an input's own fingerprint stands for it)
NEUTRAL_KEYS = (("train", "progress"), ("train", "device"), ("train", "threads"), ("train", "tensorboard"),
                ("train", "init_from"), ("data", "root"), ("method", "plan"), ("method", "teacher"),
                ("model", "imports"))  # absolute paths of --import files: where, not what
# options of a sub-run that name its inputs' files (the needs' fingerprints stand for them)
NEUTRAL_OPTIONS = ("init_from", "teacher")
# the code an iterative chain runs besides its config's method: the shrink rules, the L1 score (WM, and the
# trunks of VQ and ID) and what VQ's and ID's reconstructions call (k-means, pivoted QR, feature sums)
ITERATIVE_CODE = ("prunelab/workflows/iterative.py", "prunelab/methods/l1.py", "prunelab/methods/vq.py",
                  "prunelab/methods/interp_decomp.py", "prunelab/methods/hrank.py")
KINDS = ("train", "pipeline", "iterative")
ARRAYS = "arrays"  # the key under which a record carries its numpy arrays ({name: ndarray})


@dataclasses.dataclass
class SubRun:
    """One sub-run of a study.

    ``config(deps)`` returns the resolved :class:`~prunelab.config.Config`; ``deps`` (:class:`Deps`) gives
    the folders and records of the sub-runs named in ``needs``. ``summarize(run_dir)`` returns the small
    JSON record kept in the results file (default :func:`default_record`); ``aggregate`` reads only
    records, so a study can be aggregated from committed results without any run directory.
    ``options``: ``options(deps) -> dict`` or a dict, the task's small JSON-able options (what the
    ``iterative`` kind shrinks and from which weights: :func:`prunelab.workflows.iterative.run_iterative`)."""

    name: str
    kind: str  # "train" | "pipeline" | "iterative"
    config: Callable
    needs: tuple = ()
    part: str = ""
    label: str = ""
    summarize: Callable | None = None
    epochs: int | None = None  # schedule length when the config cannot be built yet (waiting): for --plan
    options: object = dataclasses.field(default_factory=dict)  # dict, or options(deps) -> dict
    arrays: str | None = None  # npz key prefix of the record's "arrays" (None: the sub-run's name)
    inputs: tuple | None = None  # the needs whose run directories it reads (None: all of needs)
    prepare: Callable | None = None  # prepare(deps): write the inputs its config names, before it runs

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"sub-run {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        self.label = self.label or self.name


class Pending(Exception):
    """A config asked for the record of a sub-run that is not finished yet."""


class Deps:
    """What a sub-run's config builder may read of the sub-runs it needs."""

    def __init__(self, out: Path, records: dict):
        self.out, self._records = out, records

    def dir(self, name: str) -> Path:
        """The run directory of sub-run ``name`` (it may not exist yet: only paths go into a config)."""
        return self.out / name

    def record(self, name: str) -> dict:
        """The record of the finished sub-run ``name`` (raises :class:`Pending` when it is not finished)."""
        if name not in self._records:
            raise Pending(name)
        return self._records[name]


class Study:
    """Base of a registered study: override :meth:`subruns` and :meth:`aggregate`."""

    name = ""
    parts: tuple = ()

    def subruns(self, scale: str, parts: tuple) -> list[SubRun]:
        raise NotImplementedError

    def aggregate(self, scale: str, parts: tuple, records: dict, out: Path) -> dict:
        """The results dict from the finished sub-runs' ``records`` (name -> record)."""
        raise NotImplementedError


def register_study(name: str):
    """Class decorator: register a :class:`Study` subclass under ``name`` (``prunelab experiment NAME``)."""

    def deco(cls):
        if name in STUDIES:
            raise ValueError(f"study {name!r} is registered twice")
        cls.name = name
        STUDIES[name] = cls()
        return cls

    return deco


def get_study(name: str) -> Study:
    _import_studies()
    if name not in STUDIES:
        raise UnknownNameError("study", name, STUDIES)
    return STUDIES[name]


def _import_studies():
    import importlib

    for mod in ("pfs_study", "ddnp_study", "quickstart_study", "bar_study", "manidp_study"):  # every study is on the runner
        importlib.import_module(f".{mod}", __package__)


# ---------------------------------------------------------------------------------------------------
# records and fingerprints


def default_record(run_dir: Path) -> dict:
    """A finished run directory as a small record: its ``result.json``, its metrics log and (pruning
    runs) the per-tensor channel counts of its structure."""
    from ..pruning.structure import Structure
    from ..runfiles import read_metrics
    from ..utils import read_json

    rec = {"result": read_json(run_dir / "result.json"), "metrics": read_metrics(run_dir)}
    if (run_dir / "structure.json").exists():
        rec["widths"] = Structure.load(run_dir / "structure.json").counts()
    return rec


def settings_of(cfg) -> dict:
    """A config as the dict its fingerprint hashes (:data:`NEUTRAL_KEYS` and every stage's
    ``init_from`` removed)."""
    d = json.loads(json.dumps(cfg.to_dict(), default=str))
    for sec, key in NEUTRAL_KEYS:
        (d.get(sec) or {}).pop(key, None)
    for st in (d.get("stages") or {}).values():
        if isinstance(st, dict):
            st.pop("init_from", None)
            (st.get("train") or {}).pop("progress", None)
    return d


def method_code(cfg) -> list[str]:
    """The source files whose code decides what ``cfg`` trains: its method's module (none for dense)."""
    name = (cfg.method or {}).get("name")
    f = REPO_ROOT / "prunelab" / "methods" / f"{name}.py"
    return [str(f.relative_to(REPO_ROOT))] if name and f.exists() else []


def fingerprint(cfg, needs_fps: list[str], options: dict | None = None, kind: str | None = None) -> str:
    """sha256 of the sub-run's settings (:func:`settings_of`), its method's code and its needs'
    fingerprints; then, where given, its ``options`` (without :data:`NEUTRAL_OPTIONS`) and, for an
    ``iterative`` chain, the code of :data:`ITERATIVE_CODE` (a sub-run without options of another kind
    hashes as before these were added)."""
    h = hashlib.sha256(json.dumps(settings_of(cfg), sort_keys=True).encode())
    for f in method_code(cfg) + (list(ITERATIVE_CODE) if kind == "iterative" else []):
        h.update(f.encode() + b"\0" + (REPO_ROOT / f).read_bytes())
    for fp in needs_fps:
        h.update(fp.encode())
    opts = {k: v for k, v in (options or {}).items() if k not in NEUTRAL_OPTIONS}
    if opts:
        h.update(b"options\0" + json.dumps(opts, sort_keys=True, default=str).encode())
    return h.hexdigest()


def filed_elsewhere(run_dir: Path, cfg) -> str | None:
    """Why the finished run in ``run_dir`` is not the sub-run ``cfg`` describes (None: it is): its
    ``config.yaml`` resolves to other settings (first differing key named)."""
    import yaml

    from ..config import build

    try:
        got = settings_of(build(yaml.safe_load((run_dir / "config.yaml").read_text())))
    except Exception as e:  # unreadable or invalid: not this sub-run
        return f"its config.yaml cannot be read ({type(e).__name__})"
    want = settings_of(cfg)
    diff = _first_difference(want, got)
    return None if diff is None else f"it was run with {diff[0]}={diff[2]!r}, this sub-run needs {diff[1]!r}"


def _first_difference(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
            if d:
                return d
        return None
    return None if a == b else (prefix, a, b)


def committed_records(results_file: Path, scale: str) -> dict:
    """``{name: {"fingerprint", "record", ...}}`` of the sub-runs recorded in the committed results file
    (and its ``.partial.json`` sibling; the complete file wins). A record whose arrays (``"arrays"``:
    ``{name: npz key}``) are not all in the ``.npz`` beside its file is left out (it cannot be reused)."""
    out = {}
    for f in (results_file.with_name(results_file.stem + ".partial.json"), results_file):
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if old.get("scale") != scale:
            continue
        npz = None
        for name, ent in (old.get("subruns") or {}).items():
            if not (isinstance(ent, dict) and ent.get("fingerprint") and "record" in ent):
                continue
            ent = {**ent, "made_at_commit": ent.get("made_at_commit") or old.get("commit")}
            if ent.get("arrays"):
                if npz is None:
                    npz = _load_npz(f.with_suffix(".npz"))
                if not all(k in npz for k in ent["arrays"].values()):
                    out.pop(name, None)  # an older file's copy would not match this file's record either
                    continue
                ent["record"] = {**ent["record"], ARRAYS: {n: npz[k] for n, k in ent["arrays"].items()}}
            out[name] = ent
    return out


def _load_npz(path: Path) -> dict:
    """Every array of the ``.npz`` at ``path`` (empty when it is missing or unreadable)."""
    import numpy as np

    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return {}


def array_key(sub: SubRun, name: str) -> str:
    """The ``.npz`` key of array ``name`` of sub-run ``sub``'s record."""
    prefix = sub.name if sub.arrays is None else sub.arrays
    return f"{prefix}/{name}" if prefix else name


# ---------------------------------------------------------------------------------------------------
# the runner


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"k/N"`` -> ``(k, N)`` with 1 <= k <= N; None when not sharding."""
    if shard is None:
        return None
    try:
        k, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like k/N (e.g. 1/4), got {shard!r}") from None
    if not 1 <= k <= n:
        raise ConfigError(f"--shard k/N needs 1 <= k <= N, got {shard!r}")
    return k, n


def stage_epochs(cfg, kind: str, options: dict | None = None) -> int:
    """Epochs a sub-run trains: dense training's ``train.epochs``; an iterative chain's ``train.epochs``
    per step times its ``options["steps"]``; a pipeline's enabled training stages (a pretrain stage that
    loads weights trains nothing)."""
    if kind == "train":
        return int(cfg.train.epochs)
    if kind == "iterative":
        return int(cfg.train.epochs) * int((options or {}).get("steps", 1))
    from ..workflows.stages import stage_config

    total = 0
    for stage in ("pretrain", "learn", "finetune"):
        sc = stage_config(cfg, stage)
        if sc is None or (stage == "pretrain" and (cfg.stages.get("pretrain") or {}).get("init_from")):
            continue
        total += int(sc.train.epochs)
    return total


@dataclasses.dataclass
class State:
    sub: SubRun
    state: str = "waiting"  # done | reused | ready | waiting | running | failed | missing | other-shard
    fingerprint: str | None = None
    config: object = None
    options: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    log: str = ""
    damaged: bool = False  # finished on disk, but its files cannot be read into a record


class Runner:
    """Resolves and executes one study's plan; see the module docstring."""

    def __init__(self, name: str, scale: str = "cpu", out=None, *, parts=None, results=None, collect: bool = False,
                 quiet: bool = False, executor=None, shard=None):
        if scale not in ("ci", "cpu", "paper"):
            raise ConfigError(f"scale must be ci, cpu or paper, got {scale!r}")
        self.study = get_study(name)
        self.scale, self.collect, self.quiet = scale, collect, quiet
        self.out = Path(out or f"runs/{name}-{scale}")
        self.results_file = Path(results) if results else results_path(name, scale)
        self.parts = check_parts(name, parts, self.study.parts)
        self.subs = self.study.subruns(scale, self.parts)
        names = [s.name for s in self.subs]
        if len(set(names)) != len(names):
            raise ValueError(f"study {name}: sub-run names repeat")
        self.index = {s.name: i for i, s in enumerate(self.subs)}
        for s in self.subs:
            if s.inputs is not None and not set(s.inputs) <= set(s.needs):
                raise ValueError(f"study {name}: {s.name} reads the folders of {set(s.inputs) - set(s.needs)}, "
                                 f"which are not among its needs")
            for n in s.needs:
                if self.index.get(n, len(self.subs)) >= self.index[s.name]:
                    raise ValueError(f"study {name}: {s.name} needs {n}, which is not listed before it")
        self.executor, self.shard = executor, parse_shard(shard)
        self.earlier = committed_records(self.results_file, scale)
        self.records: dict = {}
        self.planning = False
        self.states: dict[str, State] = {s.name: State(s) for s in self.subs}

    def say(self, *a):
        if not self.quiet:
            print(*a, flush=True)

    def log_path(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.log"

    def _mine(self, sub: SubRun) -> bool:
        return self.shard is None or self.index[sub.name] % self.shard[1] == self.shard[0] - 1

    def resolve(self, st: State, *, summarize: bool = True) -> None:
        """Set ``st.state`` (and its record, when finished) from what is on disk and in the committed
        results."""
        sub = st.sub
        if st.state in ("done", "reused", "failed", "running"):
            return
        # a damaged need still has its fingerprint: a dependent already finished on disk is collected
        waiting = [n for n in sub.needs if n not in self.records and not self.states[n].damaged]
        if waiting:
            st.state, st.note = "waiting", "needs " + ", ".join(waiting)
            return
        try:
            deps = Deps(self.out, self.records)
            cfg = sub.config(deps)
            options = dict(sub.options(deps) if callable(sub.options) else sub.options)
        except Pending as e:
            st.state, st.note = "waiting", f"needs {e}"
            return
        st.config, st.options = cfg, options
        st.fingerprint = fingerprint(cfg, [self.states[n].fingerprint for n in sub.needs], options, sub.kind)
        d = self.out / sub.name
        if is_done(d):
            why = filed_elsewhere(d, cfg)
            if why:
                st.state, st.note = "missing", f"refused: {why}; move {d} away and rerun"
                st.damaged = why.startswith("its config.yaml cannot be read")  # damaged, not another setting's
                return
            if not summarize:
                st.state = "done"
                return
            try:
                problem = result_problem(sub.kind, d)
                if problem:
                    raise DamagedRun(problem)
                rec = (sub.summarize or default_record)(d)
            except Exception as e:  # one damaged sub-run must not stop the others from being collected
                st.state, st.damaged, st.note = "missing", True, damaged_note(e, d)
                return
            self.records[sub.name], st.state = rec, "done"
            return
        old = self.earlier.get(sub.name)
        if old and old["fingerprint"] == st.fingerprint:
            self.records[sub.name], st.state = old["record"], "reused"
            st.note = f"from the committed results (commit {old.get('made_at_commit')})"
            return
        if _locked(d):
            st.state, st.note = "running", "another process holds its run directory"
            return
        bad = [n for n in sub.needs if self.states[n].damaged]
        if bad:  # never trained from a damaged sub-run's folder
            st.state, st.note = "waiting", "needs " + ", ".join(bad) + ", which is damaged (see its line)"
            return
        if self.collect and not self.planning:
            st.state = "missing"
            return
        if not self._mine(sub):
            st.state, st.note = "other-shard", f"shard {self.index[sub.name] % self.shard[1] + 1}/{self.shard[1]}"
            return
        # a needed sub-run known only from the committed results must be rerun first: its folder is an input
        gone = [n for n in (sub.needs if sub.inputs is None else sub.inputs)
                if self.states[n].state == "reused" and not is_done(self.out / n)]
        if gone:
            st.state, st.note = "waiting", "needs the run directories of " + ", ".join(gone) + " (rerun first)"
            for n in gone:
                self.states[n].state = "ready"
                self.states[n].note = f"rerun: {sub.name} trains from its folder"
                self.records.pop(n, None)
            return
        st.state = "ready"

    def task(self, st: State) -> Task:
        return Task(study=self.study.name, name=st.sub.name, kind=st.sub.kind, config=st.config,
                    run_dir=str(self.out / st.sub.name), log=str(self.log_path(st.sub.name)),
                    options=dict(st.options))

    def plan(self) -> list[State]:
        """Resolve every sub-run without training anything (for ``--plan``)."""
        self.planning = True
        try:
            for st in self.states.values():
                self.resolve(st)
        finally:
            self.planning = False
        return list(self.states.values())

    def configs(self) -> list[State]:
        """Every sub-run with its config built regardless of what is finished (for ``--dry-run``); a config
        that needs another sub-run's record stays None, with the reason in ``note``."""
        out = []
        for sub in self.subs:
            st = State(sub)
            try:
                st.config = sub.config(Deps(self.out, {}))
                st.options = dict(sub.options(Deps(self.out, {})) if callable(sub.options) else sub.options)
            except Pending as e:
                st.note = f"config needs the record of {e}"
            out.append(st)
        return out

    def run(self) -> dict:
        """Execute the ready sub-runs until nothing more can run; then aggregate and write the results."""
        from .executors import SequentialExecutor

        t0 = time.time()
        ex = self.executor or SequentialExecutor()
        running: dict = {}
        try:
            while True:
                for st in self.states.values():
                    if st.state in ("waiting", "other-shard"):
                        st.state = "waiting"
                        self.resolve(st)
                free = getattr(ex, "slots", 1) - len(running)
                for st in [s for s in self.states.values() if s.state == "ready" and s.sub.name not in running][:max(0, free)]:
                    self.say(f"{st.sub.label}: starting ({st.sub.kind}, log {self.log_path(st.sub.name)})")
                    if st.sub.prepare is not None:
                        st.sub.prepare(Deps(self.out, self.records))
                    running[st.sub.name] = ex.submit(self.task(st))
                if not running:
                    break  # nothing running and nothing ready: all finished, or waiting on what cannot run here
                for h in ex.wait(list(running.values())):
                    name = next(n for n, v in running.items() if v is h)
                    del running[name]
                    self._finished(self.states[name], ex, h)
        finally:
            if running:
                self.say(f"interrupted: {', '.join(running)} keep their checkpoints; rerun to resume")
            if self.executor is None:
                ex.close()
        return self._write(time.time() - t0)

    def _finished(self, st: State, ex, handle) -> None:
        from ..errors import RunDirBusyError

        try:
            ex.result(handle)
        except RunDirBusyError:
            st.state, st.note = "running", "another process holds its run directory"
            self.say(f"{st.sub.label}: being run by another process; skipped here")
            return
        except TaskFailed as e:
            st.state, st.note, st.log = "failed", e.reason, e.log
            self.say(f"{st.sub.label}: FAILED ({e.reason}); log: {e.log}")
            return
        st.state = "waiting"  # resolve again: now done
        self.resolve(st)
        if st.state == "done":
            self.say(f"{st.sub.label}: finished")

    def missing(self) -> list[str]:
        """Labels of the sub-runs that are not finished (why: :meth:`why_missing`)."""
        return [st.sub.label for st in self.states.values() if st.state not in ("done", "reused")]

    def why_missing(self) -> dict:
        """``{label: "state: note"}`` of the unfinished sub-runs."""
        return {st.sub.label: st.state + (f": {st.note}" if st.note else "")
                for st in self.states.values() if st.state not in ("done", "reused")}

    def _aggregate(self) -> dict:
        """The study's ``aggregate`` of the records; a record it cannot read (a damaged or foreign run's
        summary, or a committed one of another shape) is found by adding the records one by one in plan
        order, left out, and listed as damaged with the error, so that one bad record never stops the
        others from being aggregated."""
        try:
            return self.study.aggregate(self.scale, self.parts, dict(self.records), self.out)
        except Exception as e:  # noqa: BLE001 - find the record(s) it cannot read
            first = e
        try:
            self.study.aggregate(self.scale, self.parts, {}, self.out)
        except Exception:  # noqa: BLE001 - not a record's fault (e.g. a study that refuses without its teacher)
            bad = [f"{st.sub.label}: {st.note}" for st in self.states.values()
                   if st.damaged or st.note.startswith("refused")]
            if bad and first.args and isinstance(first.args[0], str):  # say why what it needs is missing
                first.args = (f"{first.args[0]}; " + "; ".join(bad),) + first.args[1:]
            raise first from None
        good: dict = {}
        for name in [s.name for s in self.subs if s.name in self.records]:
            trial = {**good, name: self.records[name]}
            try:
                self.study.aggregate(self.scale, self.parts, trial, self.out)
            except Exception as e:  # noqa: BLE001
                st = self.states[name]
                if st.state == "reused":
                    st.note = (f"damaged: its record in {self.results_file} cannot be aggregated ({_error_line(e)}); "
                               f"remove subruns.{name} from that file and rerun the study to train it again")
                else:
                    st.note = (f"damaged: its record cannot be aggregated ({_error_line(e)}); move {self.out / name} "
                               f"away (or delete it) and rerun the study to train it again")
                st.state, st.damaged = "missing", True
                self.records.pop(name)
                self.say(f"{st.sub.label}: {st.note}")
                continue
            good = trial
        return self.study.aggregate(self.scale, self.parts, dict(self.records), self.out)

    def _write(self, wall: float) -> dict:
        res = self._aggregate()
        missing = self.missing()
        arrays, subruns = {}, {}
        for n, rec in self.records.items():
            st = self.states[n]
            ent = {"fingerprint": st.fingerprint, "kind": st.sub.kind}
            if isinstance(rec, dict) and ARRAYS in rec:
                keys = {a: array_key(st.sub, a) for a in rec[ARRAYS]}
                arrays.update({keys[a]: v for a, v in rec[ARRAYS].items()})
                rec = {k: v for k, v in rec.items() if k != ARRAYS}
                ent["arrays"] = keys
            ent["record"] = rec
            if st.state == "reused":
                ent["made_at_commit"] = self.earlier[n].get("made_at_commit")
            subruns[n] = ent
        res.update({
            "study": self.study.name, "scale": self.scale, "parts": list(self.parts),
            "command": f"prunelab experiment {self.study.name} --scale {self.scale} --out {self.out}",
            "missing": missing, "why_missing": self.why_missing(), "busy": [st.sub.label for st in self.states.values() if st.state == "running"],
            "failed": {st.sub.label: st.log for st in self.states.values() if st.state == "failed"},
            "complete": not missing and set(self.parts) == set(self.study.parts),
            "reused_subruns": [st.sub.name for st in self.states.values() if st.state == "reused"],
            "wall_time_s": wall, "created": time.strftime("%Y-%m-%d %H:%M"),
            "subruns": subruns,
        })
        written = write_results(self.results_file, res, self.say)
        if arrays:  # beside the JSON they belong to (a partial study's beside the partial file), whole or not at all
            import io

            import numpy as np

            from ..utils import atomic_write_bytes

            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(written.with_suffix(".npz"), buf.getvalue())
            res["arrays_file"] = str(written.with_suffix(".npz"))
        self.say(f"results written to {written}" + (f"; missing {len(missing)} sub-runs" if missing else "")
                 + scale_caveat(self.scale))
        return res


class DamagedRun(Exception):
    """A finished sub-run's files are not what a finished run of its kind writes."""


# what every finished run of a kind writes in result.json: key -> the type its value has
RESULT_KEYS = {
    "train": {"final": dict, "epochs": int},
    "pipeline": {"dense_test_acc": float, "final_test_acc": float, "budget_report": dict, "pruned_cost": dict},
    "iterative": {"final_test_acc": float, "steps": list},
}


def result_problem(kind: str, run_dir: Path) -> str | None:
    """What makes ``run_dir/result.json`` not the result of a finished ``kind`` run (None: nothing): not a
    JSON object, or a key every such result has missing or of another type."""
    from ..runfiles import read_record

    res = read_record(Path(run_dir) / "result.json", "sub-run")
    for key, tp in RESULT_KEYS.get(kind, {}).items():
        v = res.get(key)
        if tp is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif tp is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, tp)
        if not ok:
            return (f"{Path(run_dir) / 'result.json'} " + (f"has no {key!r}" if key not in res else
                                                            f"has {key}={v!r:.40}, not a {tp.__name__}"))
    return None


def _error_line(e: Exception) -> str:
    msg = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def damaged_note(e: Exception, run_dir: Path) -> str:
    """The ``why_missing`` note of a finished sub-run whose files cannot be read."""
    from ..errors import PrunelabError

    if isinstance(e, (DamagedRun, PrunelabError)):  # their own words, without their advice (given here)
        what = str(e).splitlines()[0].split("; ")[0][:200]
    else:
        what = _error_line(e)
    return f"damaged: {what}; move {run_dir} away (or delete it) and rerun the study to train it again"


def _locked(d: Path) -> bool:
    """Whether another process holds the run directory's lock right now."""
    import fcntl

    lock = d / ".lock"
    if not lock.exists():
        return False
    try:
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        return False
    except OSError:
        return True


def plan_table(states: list[State]) -> str:
    """``--plan``: one line per sub-run (name, part, kind, epochs, needs, state)."""
    rows = [("sub-run", "part", "kind", "epochs", "needs", "state")]
    for st in states:
        ep = stage_epochs(st.config, st.sub.kind, st.options) if st.config is not None else st.sub.epochs
        rows.append((st.sub.name, st.sub.part, st.sub.kind, "?" if ep is None else str(ep),
                     ",".join(st.sub.needs) or "-", st.state + (f" ({st.note})" if st.note else "")))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(r[i].ljust(w[i]) for i in range(5)) + "  " + r[5] for r in rows]
    counts = {}
    for st in states:
        counts[st.state] = counts.get(st.state, 0) + 1
    return "\n".join(lines + ["", "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))])
