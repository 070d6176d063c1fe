"""A catalog of pruned networks to explore: the structures in the committed cached results of every
study, and the pruning runs in any run folder a user points at, in one record form.

Each :class:`Entry` holds what the explorer (``notebooks/05_explorer.ipynb``) shows and exports: the
model, the kept channels per gated tensor (exact alive sets when the source has them, else counts),
the test accuracy and where it comes from. A dynamic entry (ManiDP) holds its per-instance kept counts
instead of one structure.

    >>> from prunelab.experiments.catalog import catalog
    >>> entries = catalog(runs=["runs"])            # cached results + every pruning run under runs/
    >>> e = entries["ddnp cpu: full seed 0"]; e.widths, e.accuracy
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import RESULTS_DIR
from ..pruning.structure import Structure


@dataclass
class Entry:
    """One pruned network (or one dynamic policy) to explore.

    Attributes:
        key: a unique label ("<study> <scale>: <run>" for cached results, the folder for runs).
        source: the results file or run directory it comes from.
        model, model_kwargs: the dense model the structure belongs to.
        kind: ``static`` or ``dynamic``.
        widths: kept channels per gated tensor (a dynamic entry: the mean over its test images).
        alive: the kept channel indices per tensor when the source records them (None: counts only).
        accuracy: test accuracy (fraction) of the pruned network, ``accuracy_note`` says which stage.
        per_instance: a dynamic entry's ``{"kept": (N, L) counts, "layers": [...], "index": test indices,
            "correct": ..., "label": ...}``.
        scale: ``ci``, ``cpu``, ``paper`` or None (a user's run: its config's scale).
    """

    key: str
    source: str
    model: str
    model_kwargs: dict
    kind: str
    widths: dict
    alive: dict | None = None
    accuracy: float | None = None
    accuracy_note: str = ""
    method: str = ""
    scale: str | None = None
    per_instance: dict | None = None
    extra: dict = field(default_factory=dict)

    def structure(self, spec) -> Structure:
        """The entry as a structure of ``spec``: its alive sets, or (counts only) the first channels of each
        tensor, marked so in the structure's ``meta``."""
        if self.alive is not None:
            s = Structure._make(spec, {n: np.asarray(a) for n, a in self.alive.items()}, model_kwargs=self.model_kwargs)
            s.meta["source"] = self.source
            return s
        s = Structure.from_counts(spec, {n: int(round(w)) for n, w in self.widths.items()},
                                  model_kwargs=self.model_kwargs)
        s.meta.update({"source": self.source, "alive_from": "counts only: the first channels of each tensor (the "
                                                            "source records widths, not which channels)"})
        return s


def _cached(path: Path, skip=None) -> list[Entry]:
    """Entries of one cached results file (the studies' formats). A row that cannot be read is left out
    and given to ``skip(path, error, row)``, so one damaged row never hides
    the file's other rows; a file that is not a mapping raises."""
    from . import note_results_read

    r = json.loads(note_results_read(path).read_text())
    if not isinstance(r, dict):
        raise ValueError(f"a results file holds a JSON object, not {type(r).__name__}")
    study, scale = r.get("study"), r.get("scale")
    head = f"{study} {scale}"
    out = []
    src = str(path)

    def add(where: str, make) -> None:
        try:
            got = make()
        except Exception as e:  # noqa: BLE001 - one damaged row: skipped, said so
            if skip is None:
                raise
            skip(path, e, where)
            return
        out.extend(got if isinstance(got, list) else [got])

    def rows(part, kind=dict):
        """``r[part]`` (nested keys split by '/'), or an empty ``kind`` when absent; another type raises."""
        v = r
        for k in part.split("/"):
            v = v.get(k) if isinstance(v, dict) else None
        if v is None:
            return kind()
        if not isinstance(v, kind):
            raise ValueError(f"{part} is a {type(v).__name__}, not a {kind.__name__}")
        return v

    if study == "quickstart":
        def l1_entry():
            l1 = r["l1"]
            s = l1["structure"]
            return Entry(f"{head}: l1 50% MACs", src, s["model"], s.get("model_kwargs", {}), "static",
                         {n: len(a) for n, a in s["alive"].items()}, s["alive"], l1.get("final_test_acc"),
                         "after fine-tuning", "l1", scale)

        add("l1", l1_entry)
        for i, row in enumerate(rows("latency/rows", list)):
            add(f"latency row {i}", lambda row=row: Entry(
                f"{head}: l1 {row['label']}", src, "resnet20", {}, "static", row["widths"], None,
                row["final_test_acc"], "after fine-tuning", "l1", scale))
    elif study == "ddnp":
        for k, run in rows("runs").items():
            def ddnp_entry(k=k, run=run):
                acc = run.get("finetuned_test_acc")
                return Entry(f"{head}: ddnp {k.replace('/s', ' seed ')}", src, r["model"], {}, "static",
                             dict(zip(r["layers"], run["widths"])), None,
                             acc if acc is not None else run.get("extracted_test_acc"),
                             "after fine-tuning" if acc is not None else "extracted, before fine-tuning", "ddnp", scale)

            add(f"runs {k}", ddnp_entry)
        for k, run in rows("compare").items():
            add(f"compare {k}", lambda k=k, run=run: Entry(
                f"{head}: {k.replace('/s', ' seed ')} (comparison)", src, r["model"], {}, "static",
                dict(zip(r["layers"], run["widths"])), None, run["finetuned_test_acc"], "after fine-tuning",
                run["method"], scale))
    elif study == "pfs":
        sweeps = rows("sweeps/pruning_ratio", list) + rows("sweeps/expansion", list)
        for i, row in enumerate(sweeps):
            def pfs_entry(row=row):
                width = int(round(16 * row["rate"]))
                widths = row["widths"] if isinstance(row["widths"], dict) else dict(zip(r["layers"], row["widths"]))
                return Entry(f"{head}: pfs rate {row['rate']:g} ratio {row['ratio']:g} run {row['run']}", src,
                             r["model"], {"width": width} if width != 16 else {}, "static", widths, None, row["acc"],
                             "trained from scratch", "pfs", scale)

            add(f"sweep row {i}", pfs_entry)
        for i, st in enumerate(rows("structures", list)):
            add(f"structure {i}", lambda st=st: Entry(
                f"{head}: pfs structure seed {st['seed']} checkpoint {st['epoch']}", src, r["model"], {}, "static",
                dict(zip(r["layers"], st["widths"])), None, None, "no accuracy (a structure of the similarity study)",
                "pfs", scale))
    elif study == "bar":
        for i, run in enumerate(rows("runs", list)):
            def bar_entry(run=run):
                s = run["structure"]
                return Entry(f"{head}: bar PF {run['pf']}", src, s["model"], s.get("model_kwargs", {}), "static",
                             {n: len(a) for n, a in s["alive"].items()} if "alive" in s else dict(s["channels"]),
                             s.get("alive"), run["accuracy"], "after fine-tuning", "bar", scale,
                             extra={"v_factor": run.get("v_factor")})

            add(f"runs {i}", bar_entry)
    elif study == "manidp":
        npz = path.with_suffix(".npz")
        arrays = np.load(npz) if npz.exists() else None
        for v, rec in rows("variants").items():
            def manidp_entry(v=v, rec=rec):
                per = None
                if arrays is not None and f"{v}/test_kept" in arrays:
                    kept = arrays[f"{v}/test_kept"]
                    per = {"kept": kept, "layers": r["layers"], "index": arrays[f"{v}/test_index"],
                           "correct": arrays[f"{v}/test_correct"], "label": arrays[f"{v}/test_label"]}
                widths = (dict(zip(r["layers"], per["kept"].mean(0))) if per is not None
                          else dict(zip(r["layers"], r["channels"])))
                return Entry(f"{head}: manidp {v}", src, r["model"], {}, "dynamic", widths, None,
                             rec.get("final_test_acc"), "dynamic network at the end of training", "manidp", scale, per)

            add(f"variant {v}", manidp_entry)
    return out


def _is_number(v) -> bool:
    import math

    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def entry_problem(e: Entry, specs: dict) -> str | None:
    """What makes ``e`` unusable by the explorer (None: nothing): a model the package cannot build, widths
    that are not channel counts of that model's gated tensors, alive sets that are not channel indices,
    an accuracy that is not a fraction. ``specs`` caches the model descriptions."""
    from .. import models

    if not isinstance(e.model, str) or not isinstance(e.model_kwargs, dict):
        return f"model {e.model!r} with arguments {e.model_kwargs!r} is not a model name and a mapping"
    key = (e.model, json.dumps(e.model_kwargs, sort_keys=True, default=str))
    if key not in specs:
        try:
            specs[key] = models.describe(models.create(e.model, **e.model_kwargs))
        except Exception as err:  # noqa: BLE001
            specs[key] = f"model {e.model!r} ({e.model_kwargs}) cannot be built: {_reason(err)}"
    spec = specs[key]
    if isinstance(spec, str):
        return spec
    if not isinstance(e.widths, dict) or not e.widths:
        return "no kept widths"
    for n, w in e.widths.items():
        if n not in spec:
            return f"{n!r} is not a gated tensor of {e.model}"
        if not _is_number(w) or not 0 <= w <= spec.tensor(n).channels:
            return f"{n} keeps {w!r} channels, not a number in [0, {spec.tensor(n).channels}]"
    for n, a in (e.alive or {}).items():
        c = spec.tensor(n).channels if n in spec else 0
        if n not in spec or not isinstance(a, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < c for i in a) or len(set(a)) != len(a):
            return f"the alive channels of {n!r} are not distinct indices of its {c} channels"
    if e.accuracy is not None and not (_is_number(e.accuracy) and 0 <= e.accuracy <= 1):
        return f"accuracy {e.accuracy!r} is not a fraction in [0, 1]"
    return None


def _run_entry(run: Path) -> Entry | None:
    """The entry of one pruning run directory (its fine-tuned result's structure), or None."""
    from ..runfiles import read_record

    res_file, st_file = run / "result.json", run / "structure.json"
    if not res_file.exists():
        return None
    res = read_record(res_file, "run")
    if not isinstance(res, dict) or "budget_report" not in res:
        return None  # a dense training run
    method = (res.get("method") or {}).get("name", "")
    acc = res.get("final_test_acc")
    if st_file.exists():
        s = Structure.load(st_file)
        return Entry(str(run), str(run), s.model, s.model_kwargs, "static", s.counts(),
                     {n: a.tolist() for n, a in s.alive.items()}, acc, "after fine-tuning", method, res.get("scale"))
    if res.get("result_kind") == "dynamic":
        _ensure_model(run)
        widths = res.get("budget_report", {}).get("widths", {})
        return Entry(str(run), str(run), res["model"], res.get("model_kwargs") or {}, "dynamic", widths, None, acc,
                     "dynamic network", method, res.get("scale"), extra={"run": str(run)})
    return None


def _ensure_model(run: Path) -> None:
    """A run of a model from outside the package: import what its result's plan recorded (``--import``s,
    the builder), so the explorer builds its model by name in this process too."""
    from ..pruning.result import ensure_plan_model

    for d in ("final", "pruned"):
        p = run / d / "plan.json"
        if p.is_file():
            ensure_plan_model(json.loads(p.read_text()), p)
            return


class Catalog(dict):
    """``{key: Entry}``, plus ``skipped``: ``[(path, reason), ...]`` of the files and run folders that could
    not be read (damaged, truncated, or of another format)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.skipped: list[tuple[str, str]] = []


def _reason(e: Exception) -> str:
    msg = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def catalog(results_dir=RESULTS_DIR, runs=(), *, quiet: bool = False) -> Catalog:
    """Every entry of the cached ``results_dir/*_<scale>.json`` files and of the pruning runs found under
    the folders ``runs`` (searched recursively for ``result.json``). A file or run folder that cannot be
    read is skipped with one line (unless ``quiet``) and listed in the catalog's ``skipped``: one damaged
    run never hides the others."""
    out = Catalog()
    entries: list[Entry] = []

    def skip(path, e, where: str = ""):
        why = (f"{where}: " if where else "") + _reason(e)
        out.skipped.append((str(path), why))
        if not quiet:
            print(f"catalog: skipped {path} ({why})")

    for p in sorted(Path(results_dir).glob("*.json")):
        if p.name.endswith(".partial.json"):
            continue
        try:
            entries += _cached(p, skip)
        except Exception as e:  # a damaged file or one of another format: skipped, said so
            skip(p, e)
    for root in runs:
        for res in sorted(Path(root).rglob("result.json")):
            try:
                e = _run_entry(res.parent)
            except Exception as err:  # garbage result.json, truncated structure.json, ...
                skip(res.parent, err)
                continue
            if e is not None:
                entries.append(e)
    specs: dict = {}
    for e in entries:  # an entry the explorer could not draw (bogus widths, unknown model) is skipped here
        try:
            why = entry_problem(e, specs)
        except Exception as err:  # noqa: BLE001
            why = _reason(err)
        if why:
            skip(e.source, ValueError(why), e.key)
        else:
            out[e.key] = e
    return out


def export_plan(entry: Entry, path) -> Path:
    """Write ``entry``'s structure as a plan file (``prunelab compact PLAN --weights CKPT``)."""
    from .. import models

    spec = models.describe(models.create(entry.model, **entry.model_kwargs))
    s = entry.structure(spec)
    s.meta.update({"exported_from": entry.key, "accuracy": entry.accuracy, "accuracy_note": entry.accuracy_note})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s.save(path)
    return path
