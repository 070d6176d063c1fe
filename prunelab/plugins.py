"""Code from outside the package that the command line, configs and saved results see.

Models, methods and studies register themselves when their module is imported
(:func:`prunelab.models.register_model`, :func:`prunelab.methods.register`,
:func:`prunelab.experiments.runner.register_study`). Three ways bring such a module in:

* ``--import MODULE`` on any ``prunelab`` command (repeatable): a dotted module name on ``sys.path``,
  or a path to a ``.py`` file (its folder need not be on ``sys.path``);
* ``model.imports`` in a config (what ``--import`` adds to a run's ``config.yaml``, so that ``prunelab
  eval``/``compact`` and the explorer reload the run in a fresh process without it);
* an installed package's entry points of group ``prunelab.plugins`` (a module, imported; or a
  function, called once with no arguments), loaded once per process: by the command line at start and
  by the registries before they call a name unknown.

A file is imported under its stem (``mymodels.py`` -> ``mymodels``, so ``model.builder:
"mymodels:make"`` finds it) unless another module of that name exists; then under a name of its own
(``prunelab_plugin_<stem>_<hash>``). What was imported is recorded (:func:`imported`: absolute paths
for files) and saved with plans and run configs; :func:`load_recorded` imports it again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from .errors import ConfigError

GROUP = "prunelab.plugins"
ENV = "PRUNELAB_IMPORTS"  # os.pathsep-separated imports a child process (a study's worker) loads
MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
BUILDER_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_IMPORTED: list[str] = []  # recorded items, in import order
_FILES: dict[str, str] = {}  # absolute file path -> module name it was imported under
_AUTO_DONE = False


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def is_file_item(item: str) -> bool:
    """Whether an ``--import`` item names a file (ends in .py or has a path separator) rather than a module."""
    return item.endswith(".py") or any(s in item for s in (os.sep, os.altsep) if s)


def _module_name_for(path: Path) -> str:
    """The stem when no other module has that name, else a name unique to the path (deterministic, so
    every process imports one file under one name)."""
    stem = path.stem
    if stem.isidentifier() and stem not in sys.modules:
        try:
            found = importlib.util.find_spec(stem)
        except (ImportError, ValueError):
            found = None
        if found is None or (found.origin and Path(found.origin).resolve() == path):
            return stem
    elif stem.isidentifier() and Path(getattr(sys.modules[stem], "__file__", "") or "").resolve() == path:
        return stem
    safe = re.sub(r"\W", "_", stem)
    return f"prunelab_plugin_{safe}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def _import_file(path: Path, where: str) -> str:
    """Import the .py file ``path`` (absolute); returns the module name."""
    if str(path) in _FILES:
        return _FILES[str(path)]
    name = _module_name_for(path)
    if name in sys.modules and Path(getattr(sys.modules[name], "__file__", "") or "").resolve() == path:
        _FILES[str(path)] = name
        return name
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{where} {path}: not an importable Python file; give a .py file or a module name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  (the file's own error, named: it is the user's code)
        sys.modules.pop(name, None)
        raise ConfigError(f"{where} {path}: importing it failed ({_first_line(e)}); fix that file") from None
    _FILES[str(path)] = name
    return name


def import_plugin(item: str, *, where: str = "--import") -> str:
    """Import one item, a dotted module name or a path to a ``.py`` file; returns its recorded form (the
    module name, or the file's absolute path). One :class:`ConfigError` line naming it and the fix."""
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"{where} takes a module name or a .py file, got {item!r}")
    item = item.strip()
    if is_file_item(item):
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{where} {item}: no such file; give the path of a .py file (or a module name on "
                              f"PYTHONPATH)")
        _import_file(path, where)
        recorded = str(path)
    else:
        if not MODULE_RE.fullmatch(item):
            raise ConfigError(f"{where} {item!r} is neither a dotted module name nor a path to a .py file")
        try:
            importlib.import_module(item)
        except Exception as e:  # noqa: BLE001  (a missing module, or the module's own error: named either way)
            raise ConfigError(f"{where} {item}: importing it failed ({_first_line(e)}); put it on PYTHONPATH (or "
                              f"install it), or give the path of its .py file") from None
        recorded = item
    if recorded not in _IMPORTED:
        _IMPORTED.append(recorded)
    return recorded


def load_plugins(imports=(), *, where: str = "--import", entry_points: bool = True) -> list[str]:
    """Import each of ``imports`` (:func:`import_plugin`) and, once per process, the entry points of group
    ``prunelab.plugins`` and ``$PRUNELAB_IMPORTS``; returns the recorded forms of ``imports``."""
    if entry_points:
        load_auto()
    return [import_plugin(i, where=where) for i in imports or ()]


def load_auto() -> None:
    """Once per process: every entry point of group ``prunelab.plugins`` and the items of
    ``$PRUNELAB_IMPORTS``. A broken entry point is reported on stderr and skipped (an installed package
    must not make every command fail); a broken ``$PRUNELAB_IMPORTS`` item is an error."""
    global _AUTO_DONE
    if _AUTO_DONE:
        return
    _AUTO_DONE = True  # first: a plugin that looks a name up while it loads must not load plugins again
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type(sys)):
                obj()
        except Exception as e:  # noqa: BLE001
            dist = getattr(getattr(ep, "dist", None), "name", None) or "its package"
            print(f"prunelab: warning: plugin entry point {ep.name} = {ep.value} ({dist}) failed to load "
                  f"({_first_line(e)}); fix or uninstall {dist}", file=sys.stderr)
    for item in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        import_plugin(item, where=f"${ENV}")


def imported() -> list[str]:
    """The recorded forms of everything imported through :func:`import_plugin` in this process."""
    return list(_IMPORTED)


def export_to_children(items) -> None:
    """Add ``items`` to ``$PRUNELAB_IMPORTS``, so that processes started from here (a study's workers)
    import them too."""
    have = [i for i in os.environ.get(ENV, "").split(os.pathsep) if i]
    os.environ[ENV] = os.pathsep.join(have + [i for i in items if i not in have])


def load_recorded(items, where: str) -> list[str]:
    """Import what a saved plan or run config recorded; returns the recorded forms. A recorded file that no
    longer exists is one line naming it and ``--import`` (a file of that name given with ``--import`` in
    this process stands in for it: the user moved it)."""
    if not items:
        return []
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: recorded imports must be a list of module names and file paths, got {items!r}")
    out = []
    for item in items:
        if is_file_item(item) and not Path(item).expanduser().is_file():
            stand_in = next((f for f in _FILES if Path(f).name == Path(item).name), None)
            if stand_in is None:
                raise ConfigError(f"{where}: {item} does not exist (imported with --import when this was made?); "
                                  f"restore that file, or give its new place with --import")
            out.append(stand_in)
            continue
        out.append(import_plugin(item, where=where))
    return list(dict.fromkeys(out))


def resolve_function(spec: str, key: str = "model.builder"):
    """The function named by ``"module.path:function"``; one line naming ``key`` and the fix when it cannot
    be had (the module of a file given with ``--import`` is found by its stem)."""
    fix = (f"put its module on PYTHONPATH (or install it, or load its file with --import) and write {key} as "
           f"'module.path:function'")
    if not isinstance(spec, str) or not BUILDER_RE.fullmatch(spec):
        raise ConfigError(f"{key} must be 'module.path:function' (an importable module and the function in it), "
                          f"got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001  (a missing module, or the module's own import error: named either way)
        raise ConfigError(f"{key} {spec!r}: importing {mod_name!r} failed ({_first_line(e)}); {fix}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key} {spec!r}: {mod_name} has no {attr!r}; {fix}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key} {spec!r} names a {type(obj).__name__}, not a function; {fix}")
    return obj
