"""Experiments that reproduce a supplement's figures: many runs, one small cached results file.

    prunelab experiment bar --scale cpu [--out runs/bar-cpu] [--resume] [--parts teacher,bar,random]
    prunelab experiment pfs --scale cpu

Every sub-run is an ordinary, resumable run directory under ``--out``; a finished sub-run is never
trained again. The aggregated results (no weights) go to ``results/<name>_<scale>.json`` in the
repository, which the notebooks read. Rerunning the same command regenerates them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, UnknownNameError, suggest

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "results"


# every results file read in this process (path relative to the repository where inside it -> sha256): a
# notebook's build records them in its metadata, and tests/test_notebook_freshness.py checks that a
# committed notebook was executed on the results files now in the tree
_RESULTS_READ: dict[str, str] = {}


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def note_results_read(path) -> Path:
    """Record that this process read results file ``path`` (its sha256 now); returns the path."""
    path = Path(path).resolve()
    try:
        key = path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        key = str(path)
    _RESULTS_READ[key] = _file_sha256(path)
    return path


def results_read() -> dict:
    """``{path: sha256}`` of every results file this process has read (:func:`note_results_read`); paths
    inside the repository are relative to it."""
    return dict(sorted(_RESULTS_READ.items()))


def load_results_file(path):
    """A results file other than a study's own (``.json`` as a dict, ``.npz`` as numpy's lazy archive),
    recorded as read (:func:`note_results_read`)."""
    import json

    path = note_results_read(path)
    if path.suffix == ".npz":
        import numpy as np

        return np.load(path)
    return json.loads(path.read_text())


def results_path(name: str, scale: str) -> Path:
    """Where the cached results of experiment ``name`` at ``scale`` live."""
    return RESULTS_DIR / f"{name}_{scale}.json"


def check_parts(study: str, parts, valid: tuple) -> tuple:
    """The parts of ``study`` to run (all when None); an unknown part name is refused before anything runs."""
    if not parts:
        return tuple(valid)
    parts = tuple(p.strip() for p in parts if p.strip())
    for p in parts:
        if p not in valid:
            raise ConfigError(f"experiment {study} has no part {p!r}.{suggest(p, valid)} Parts: {', '.join(valid)}")
    return parts


def open_study(name: str, scale: str, out, results, parts, valid: tuple, *, collect: bool = False,
               quiet: bool = False):
    """What every study starts with: ``(out, results_file, parts, runs)`` (its sub-run folder, its
    results file, the checked parts and a :class:`~prunelab.workflows.SubRuns` over ``out``)."""
    from ..workflows import SubRuns

    out = Path(out or f"runs/{name}-{scale}")
    results_file = Path(results) if results else results_path(name, scale)
    return out, results_file, check_parts(name, parts, valid), SubRuns(out, collect=collect, quiet=quiet)


# what each study's numbers depend on: the configs it resolves and the files whose code makes them
# (a change elsewhere, e.g. in the trainer, is not tracked here)
RECIPES = {
    "bar": {"configs": ["bar_wrn_teacher", "bar_wrn_bar", "bar_wrn_ib", "bar_wrn_morphnet"],
            "files": ["prunelab/experiments/bar_study.py", "prunelab/methods/bar.py", "prunelab/methods/random.py",
                      "prunelab/workflows/iterative.py", "prunelab/methods/lzr.py", "prunelab/methods/l1.py",
                      "prunelab/experiments/tasks.py", "prunelab/methods/ib.py", "prunelab/methods/morphnet.py",
                      "prunelab/methods/vq.py", "prunelab/methods/interp_decomp.py", "prunelab/methods/hrank.py"]},
    "pfs": {"configs": ["resnet20", "resnet20_pfs"],
            "files": ["prunelab/experiments/pfs_study.py", "prunelab/methods/pfs.py"]},
    "quickstart": {"configs": ["resnet20", "resnet20_l1"],
                   "files": ["prunelab/experiments/quickstart_study.py", "prunelab/methods/l1.py",
                             "prunelab/pruning/budget.py", "prunelab/pruning/latency.py"]},
    "manidp": {"configs": ["resnet20", "resnet20_manidp", "resnet20_l1"],
               "files": ["prunelab/experiments/manidp_study.py", "prunelab/methods/manidp.py",
                         "prunelab/methods/plan.py", "prunelab/methods/l1.py"]},
    "ddnp": {"configs": ["resnet20", "resnet20_ddnp", "resnet20_l1", "resnet20_pfs", "resnet20_slimming",
                         "resnet20_hrank", "resnet20_chip"],
             "files": ["prunelab/experiments/ddnp_study.py", "prunelab/methods/ddnp.py", "prunelab/methods/l1.py",
                       "prunelab/methods/pfs.py", "prunelab/methods/slimming.py", "prunelab/methods/hrank.py",
                       "prunelab/methods/chip.py"]},
}


def provenance(name: str, scale: str) -> dict:
    """The recipe of study ``name`` and two fingerprints of it as the code stands now: the sha256 of its
    configs resolved at ``scale`` (defaults, file and scale block merged) and of its code files."""
    import hashlib
    import json

    from ..config import load_config

    recipe = RECIPES[name]
    resolved = {c: load_config(c, scale).to_dict() for c in recipe["configs"]}
    config_hash = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()
    h = hashlib.sha256()
    for f in recipe["files"]:
        h.update(f.encode() + b"\0" + (REPO_ROOT / f).read_bytes())
    return {"recipe": recipe, "config_hash": config_hash, "code_hash": h.hexdigest()}


def staleness(results: dict) -> list[str]:
    """Why a cached results file may be older than the code reading it (empty: it is current): its
    recorded config or code fingerprint differs from the one computed now, or it has none."""
    name, scale = results.get("study"), results.get("scale")
    if name not in RECIPES or scale not in ("ci", "cpu", "paper"):
        return [f"results of an unknown study {name!r}"]
    if "config_hash" not in results or "code_hash" not in results:
        return [f"the {name} results predate provenance fingerprints (made at commit {results.get('commit')})"]
    now = provenance(name, scale)
    out = []
    if results["config_hash"] != now["config_hash"]:
        out.append(f"the configs {', '.join(now['recipe']['configs'])} resolve differently now than when these "
                   f"results were made")
    if results["code_hash"] != now["code_hash"]:
        out.append(f"the code in {', '.join(now['recipe']['files'])} changed since these results were made")
    return out


def provenance_note(results: dict) -> str:
    """One line for a notebook: what made the results, a warning when the code moved on since, and, for
    a partial study (``--collect`` before every sub-run finished), which sub-runs are missing and why: a
    notebook prints it right after loading, before anything reads a part that may not be there."""
    version = results.get("package_version")
    head = (f"results: {results.get('command')} at commit {results.get('commit')} ("
            f"{'prunelab ' + version if version else 'package version not recorded'}, {results.get('created')})")
    stale = staleness(results)
    out = head + ("" if not stale else "\nWARNING: cached results older than the code: " + "; ".join(stale)
                  + " (rerun the command above to refresh them)")
    missing = results.get("missing") or []
    if missing:
        why = results.get("why_missing") or {}
        out += (f"\npartial results: {len(missing)} sub-run(s) missing: "
                + "; ".join(f"{m} ({why[m]})" if why.get(m) else str(m) for m in missing)
                + "; the figures below that need them fail until they finish (rerun the command above)")
    return out


def _covers_more(old: dict, new: dict) -> bool:
    """Whether results ``old`` hold more of the study than the partial ``new``: they are complete, a
    strict superset of its parts, or the same parts with fewer sub-runs missing (a partial write must not
    throw finished sub-runs away)."""
    old_parts, new_parts = set(old.get("parts") or ()), set(new.get("parts") or ())
    if old.get("complete") or old_parts > new_parts:
        return True
    return old_parts == new_parts and len(old.get("missing") or ()) < len(new.get("missing") or ())


def write_results(path, results: dict, say=print) -> Path:
    """Write a study's results, with the commit, package version and recipe fingerprints (configs and
    code, :func:`provenance`) that made them. A partial study (a ``--parts`` subset, or sub-runs
    missing) never replaces a complete results file, nor a partial one that covers more (more parts, or
    the same parts with fewer sub-runs missing): it goes beside it as ``<name>.partial.json``, marked
    partial."""
    import json

    from .. import __version__
    from ..utils import git_commit, to_jsonable, write_json

    path = Path(path)
    results = {**results, "commit": git_commit(REPO_ROOT), "package_version": __version__}
    if results.get("study") in RECIPES and results.get("scale") in ("ci", "cpu", "paper"):
        results.update(provenance(results["study"], results["scale"]))
    if not results.get("complete"):
        results = {**results, "partial": True}
        if path.exists():
            try:
                old_covers_more = _covers_more(json.loads(path.read_text()), results)
            except (OSError, ValueError, AttributeError):
                old_covers_more = False
            if old_covers_more:
                kept, path = path.name, path.with_name(path.stem + ".partial.json")
                say(f"the study is partial (parts {results.get('parts')}, missing {len(results.get('missing', []))} "
                    f"sub-runs): {path.name} written, {kept} (which covers more) is left as it was")
    write_json(path, to_jsonable(results))
    return path


def experiments() -> dict:
    import importlib

    out = {}
    for name in ("bar", "pfs", "quickstart", "manidp", "ddnp"):
        mod = importlib.import_module(f".{name}_study", __name__)
        out[name] = mod.run
    return out


def run(name: str, scale: str, out=None, *, parts=None, quiet: bool = False, results=None,
        collect: bool = False, executor=None, shard=None) -> dict:
    """Run (or continue) study ``name``; ``collect=True`` trains nothing and aggregates the finished
    sub-runs (the results then list what is missing under ``"missing"``). ``executor`` (see
    :mod:`.executors`) and ``shard`` ("k/N") spread the sub-runs of the studies on the runner
    (:mod:`.runner`)."""
    from .runner import STUDIES, Runner, _import_studies

    _import_studies()
    exps = experiments()
    if name not in exps and name not in STUDIES:  # a study registered outside the package: its plugin first
        from ..plugins import load_auto

        load_auto()
    if name not in exps and name not in STUDIES:
        raise UnknownNameError("experiment", name, {**exps, **STUDIES})
    if name in STUDIES:
        return Runner(name, scale, out, parts=parts, results=results, collect=collect, quiet=quiet, executor=executor,
                      shard=shard).run()
    if executor is not None or shard is not None:
        raise ConfigError(f"study {name!r} is not on the study runner yet: it runs in one process (run it twice "
                          f"for two processes); --executor, --workers and --shard work for "
                          f"{', '.join(sorted(STUDIES))}")
    kw = {"collect": True} if collect else {}
    if collect and name not in ("bar", "pfs", "manidp", "ddnp"):
        raise ConfigError(f"--collect is supported by the bar, pfs, manidp and ddnp studies, not {name!r}")
    return exps[name](scale, out, parts=parts, quiet=quiet, results=results, **kw)


def resolve_scale(requested: str | None, name: str) -> str:
    """The scale a notebook runs at. ``auto`` (the default): ``cpu`` when the cached cpu results of
    experiment ``name`` exist, else ``ci``. ``ci``, ``cpu`` and ``paper`` are taken as given."""
    import os

    requested = requested or os.environ.get("PRUNELAB_SCALE", "auto")
    if requested == "auto":
        return "cpu" if results_path(name, "cpu").exists() else "ci"
    if requested not in ("ci", "cpu", "paper"):
        from ..errors import ConfigError

        raise ConfigError(f"PRUNELAB_SCALE must be auto, ci, cpu or paper, got {requested!r}")
    return requested


def load_results(name: str, scale: str, *, out=None, run_if_missing: bool = True, quiet: bool = True) -> dict:
    """Cached results of experiment ``name`` at ``scale``; at ``ci`` scale they are computed on the
    spot (seconds) into ``out`` (default: a temporary folder). ``cpu``/``paper`` results must have been
    produced by ``prunelab experiment NAME --scale ...`` first."""
    import json
    import tempfile

    path = results_path(name, scale)
    if scale == "ci" and run_if_missing:
        tmp = Path(out or tempfile.mkdtemp(prefix=f"prunelab-{name}-ci-"))
        made = run(name, "ci", tmp / "runs", quiet=quiet, results=tmp / f"{name}_ci.json")
        written = tmp / f"{name}_ci.json"  # as written: with its commit, version and fingerprints
        return {**made, **json.loads(written.read_text())} if written.exists() else made
    if not path.exists():
        from ..errors import DataError

        raise DataError(f"no cached {scale}-scale results at {path}; produce them with "
                        f"`prunelab experiment {name} --scale {scale}` (or run the notebook with PRUNELAB_SCALE=ci)")
    return json.loads(note_results_read(path).read_text())


def holds_part(results: dict, part: str) -> bool:
    """Whether ``results`` ran ``part`` and hold something for it (its entry, where the study keeps one
    under the part's name, is not empty)."""
    return part in (results.get("parts") or ()) and bool(results.get(part, True))


def results_with_part(results: dict, name: str, scale: str, part: str) -> dict:
    """``results`` if they hold ``part``; else the ``.partial.json`` sibling of the study's results file
    when that holds it (a part run on its own with ``--parts``, e.g. after the rest was committed: a partial
    write never replaces the complete file, :func:`write_results`); else ``results`` unchanged.

    The sibling is read as a results file of its own (its provenance, its freshness fingerprint); its
    sub-runs share the rest's settings fingerprints but not necessarily the same run of their dense
    checkpoint, so a comparison is drawn within one file, never across the two."""
    import json

    if holds_part(results, part):
        return results
    partial = results_path(name, scale)
    partial = partial.with_name(partial.stem + ".partial.json")
    if not partial.exists():
        return results
    other = json.loads(partial.read_text())
    if other.get("scale") != scale or not holds_part(other, part):
        return results
    note_results_read(partial)
    return other
