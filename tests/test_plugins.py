"""Models, methods and studies from outside the package reach the CLI, configs and saved results (issue 27,
item 5): ``--import``, ``model.builder``, the ``prunelab.plugins`` entry points, and plans that record how
to rebuild their model so a fresh process reloads them.

The model lives in a file under ``tmp_path`` (outside the repository, its folder never on ``sys.path``):
a small residual CNN and synthetic data. Every command runs in a process of its own, from a folder
that is not the file's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from prunelab import models, plugins
from prunelab.config import build
from prunelab.errors import ConfigError
from prunelab.models import registry

PY = sys.executable

MODEL_FILE = textwrap.dedent('''
    """A small residual CNN and synthetic data (written by tests/test_plugins.py; imports nothing of prunelab)."""
    import torch
    import torch.nn as nn


    class TinyRes(nn.Module):
        def __init__(self, width, num_classes):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.stem(x)
            y = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(x + self.bn2(self.conv2(y)))  # the residual add: a traced trunk
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


    def make(width: int = 8, num_classes: int = 10):
        return TinyRes(width, num_classes)


    def data(n: int = 80, size: int = 16):
        g = torch.Generator().manual_seed(0)
        y = torch.arange(n) % 10
        x = torch.randn(n, 3, size, size, generator=g) + y.view(-1, 1, 1, 1) * 0.2
        ds = torch.utils.data.TensorDataset(x, y)
        return ds, ds
''')

CONFIG = textwrap.dedent('''
    name: tiny
    base_scale: ci
    model: {MODEL}
    data: {{dataset: synthetic, builder: "tinyres:data", batch_size: 16, eval_batch_size: 80}}
    method: {{name: l1, mode: global}}
    budget: {{metric: macs, keep: 0.6}}
    stages:
      pretrain: {{train: {{epochs: 1}}}}
      finetune: {{train: {{epochs: 1}}}}
    train: {{progress: false, device: cpu, threads: 1}}
''')


def run(*args, cwd, env=None, code=None):
    """``prunelab ARGS`` (or ``python -c CODE``) in a fresh process started in ``cwd``."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop(plugins.ENV, None)
    cmd = [PY, "-c", code] if code is not None else [PY, "-m", "prunelab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=300)


def one_line(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture
def place(tmp_path):
    """``code/tinyres.py`` (the model file) and ``work/`` (where commands run)."""
    (tmp_path / "code").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "code" / "tinyres.py").write_text(MODEL_FILE)
    return tmp_path


@pytest.fixture
def clean_registries(monkeypatch):
    """In-process checks leave no model, builder or import behind for the other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_IMPORTED", [])
    monkeypatch.setattr(plugins, "_FILES", {})
    monkeypatch.setattr(plugins, "_AUTO_DONE", True)  # installed entry points stay out of this process
    yield
    for name in ("tinyres", "prunelab_test_notnet"):  # imported here from tmp_path
        sys.modules.pop(name, None)


def test_a_builder_model_from_a_file_is_pruned_and_reloaded_in_fresh_processes(place):
    src, work = place / "code" / "tinyres.py", place / "work"
    cfg = work / "tiny.yaml"
    cfg.write_text(CONFIG.format(MODEL='{builder: "tinyres:make", kwargs: {width: 8}, input_shape: [3, 16, 16]}'))
    pruned = run("prune", str(cfg), "--scale", "ci", "--import", str(src), "--out", "run", cwd=work)
    assert pruned.returncode == 0, pruned.stderr
    assert "fine-tuned" in pruned.stdout

    # the run records how to rebuild its model: the config and the plan
    saved = (work / "run" / "config.yaml").read_text()
    assert "builder: tinyres:make" in saved and str(src) in saved
    plan = json.loads((work / "run" / "compact" / "plan.json").read_text())
    assert plan["model"] == "tinyres:make" and plan["model_kwargs"] == {"width": 8}
    assert plan["meta"]["model_source"] == {"builder": "tinyres:make", "input_size": [3, 16, 16]}
    assert plan["meta"]["imports"] == [str(src)]

    # a new process reloads and evaluates it without --import (the run recorded it)
    ev = run("eval", "run", cwd=work)
    assert ev.returncode == 0, ev.stderr
    assert "[static model]" in ev.stdout and "on 80 images" in ev.stdout

    # the model's file moved: one line naming it and --import
    moved = place / "elsewhere" / "tinyres.py"
    moved.parent.mkdir()
    src.rename(moved)
    one_line(run("eval", "run", cwd=work), str(src), "--import")

    # one more fresh process: eval given the file's new place; compact the run, reload it; the explorer's
    # catalog, and a plan it exports compacted
    check = textwrap.dedent(f'''
        from prunelab import models
        from prunelab.cli import main
        from prunelab.experiments.catalog import catalog, export_plan
        from prunelab.pruning.result import load_result
        from prunelab.workflows.runs import compact_plan, compact_run
        assert main(["eval", "--import", {str(moved)!r}, "run"]) == 0
        r = load_result(compact_run("run", "again"))
        assert r.kind == "static" and r.spec.family == "traced"
        e = catalog(results_dir="nothing", runs=["."], quiet=True)["run"]
        spec = models.describe(models.create(e.model, **e.model_kwargs))
        assert spec.family == "traced" and tuple(spec.input_size) == (3, 16, 16), spec.input_size
        export_plan(e, "exported.json")
        load_result(compact_plan("exported.json", "run/pretrain.pt", "from_plan"))
        print("ok")
    ''')
    r = run(cwd=work, code=check)
    assert r.returncode == 0 and "[static model]" in r.stdout and r.stdout.endswith("ok\n"), r.stdout + r.stderr


def test_a_registered_name_from_an_imported_file(place):
    src, work = place / "code" / "tinyres.py", place / "work"
    src.write_text(MODEL_FILE + "\nfrom prunelab.models import register_model\n"
                                "register_model('tinyres', input_size=(3, 16, 16))(make)\n")
    cfg = work / "dense.yaml"
    cfg.write_text(CONFIG.format(MODEL="{name: tinyres, kwargs: {width: 4}}").split("method:")[0]
                   + "train: {epochs: 1, progress: false, device: cpu, threads: 1}\n")
    trained = run("train", str(cfg), "--import", str(src), "--scale", "ci", "--out", "run", cwd=work)
    assert trained.returncode == 0, trained.stderr
    ev = run("eval", "run", cwd=work)  # the config recorded the import
    assert ev.returncode == 0 and "[dense model]" in ev.stdout, ev.stderr
    count = run("--import", str(src), "count", "tinyres", "--set", "width=4", cwd=work)  # before the command, too
    assert count.returncode == 0 and "MACs" in count.stdout, count.stderr


def test_entry_point_plugins_register_models_and_methods(tmp_path):
    site = tmp_path / "site"
    (site / "epplug-0.1.dist-info").mkdir(parents=True)
    (site / "epplug-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 0.1\n")
    (site / "epplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[prunelab.plugins]\nepplug = epplug\nepmethods = epplug:register_methods\n")
    (site / "tinyres.py").write_text(MODEL_FILE)
    (site / "epplug.py").write_text(textwrap.dedent('''
        from prunelab.models import register_model
        import tinyres

        register_model("epnet", input_size=(3, 16, 16))(tinyres.make)


        def register_methods():
            from prunelab.methods import register
            from prunelab.methods.random import RandomPruning

            register("eprandom")(type("EpRandom", (RandomPruning,), {}))
    '''))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    assert "epnet" in run("list", "models", cwd=tmp_path, env=env).stdout.split()  # the CLI loads them at start
    # the registries load them before calling a name unknown (no CLI)
    code = ("from prunelab import methods, models\n"
            "method = methods.get('eprandom').__name__\n"
            "print(method, models.describe(models.create('epnet')).family)")
    r = run(cwd=tmp_path, env=env, code=code)
    assert r.returncode == 0 and r.stdout.split() == ["EpRandom", "traced"], r.stderr


def test_bad_imports_and_builders_are_one_line(place, clean_registries, monkeypatch, capsys):
    from prunelab.cli import main

    assert main(["count", "nosuchnet"]) == 2  # tests/test_cli.py runs such commands in processes of their own
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(n in err for n in ("unknown model 'nosuchnet'", "register_model",
                                                           "model.builder", 'README, "Your own model"')), err
    assert main(["list", "--import", str(place / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(place / "missing.py") in err and "no such file" in err, err
    with pytest.raises(ConfigError, match=r"--import prunelab_no_such_plugin: importing it failed "
                                          r"\(ModuleNotFoundError.*PYTHONPATH"):
        plugins.load_plugins(["prunelab_no_such_plugin"], entry_points=False)
    (place / "code" / "broken.py").write_text("raise RuntimeError('half written')\n")
    with pytest.raises(ConfigError, match=r"broken.py: importing it failed \(RuntimeError: half written\); fix"):
        plugins.load_plugins([str(place / "code" / "broken.py")], entry_points=False)
    assert "broken" not in sys.modules and plugins.imported() == []

    # model.builder: a bad string, a module that does not import, a missing function, not a network
    (place / "code" / "prunelab_test_notnet.py").write_text("def make():\n    return [1]\n")
    monkeypatch.syspath_prepend(str(place / "code"))

    def refused(model, *needles):
        with pytest.raises(ConfigError) as e:
            models.create(build({"model": model}).model.name)
        msg = str(e.value)
        assert "\n" not in msg and all(n in msg for n in needles), msg

    refused({"builder": "tinyres.make"}, "model.builder must be 'module.path:function'")
    refused({"builder": "prunelab_no_such_module:make"}, "model.builder", "importing 'prunelab_no_such_module' failed")
    refused({"builder": "prunelab_test_notnet:nope"}, "model.builder", "has no 'nope'")
    refused({"builder": "prunelab_test_notnet:make"}, "returned a list, not a torch.nn.Module")
    refused({"builder": "prunelab_test_notnet:make", "name": "vgg16"}, "model.name", "drop model.name")
    refused({"name": "resnet20", "input_shape": [3, 16, 16]}, "model.input_shape", "set model.builder")
    refused({"builder": "prunelab_test_notnet:make", "input_shape": [3, 16]}, "model.input_shape",
            "three whole numbers")
    with pytest.raises(ConfigError, match="model.name: unknown model 'resnet2'. Did you mean"):
        build({"model": {"name": "resnet2"}})


def test_builder_keys_leave_committed_fingerprints_unchanged(place, clean_registries):
    from prunelab.config import Config

    assert set(Config().to_dict()["model"]) == {"name", "kwargs"}  # the new keys are left out at their default
    src = str(place / "code" / "tinyres.py")
    cfg = build({"model": {"builder": "tinyres:make", "imports": [src]}})
    d = cfg.to_dict()["model"]
    assert d["name"] == d["builder"] == "tinyres:make" and d["imports"] == [src]
    net = models.create(cfg.model.name, width=4)
    assert net.prunelab_builder == "tinyres:make" and net.prunelab_input_size == (3, 32, 32)
    assert models.describe(net).family == "traced"
    assert models.rebuild_info("tinyres:make") == {"model_source": {"builder": "tinyres:make",
                                                                     "input_size": [3, 32, 32]}, "imports": [src]}
    assert models.rebuild_info("resnet20") == {"imports": [src]}


def test_a_gated_result_of_a_builder_model_reloads_from_what_its_plan_recorded(place, clean_registries, tmp_path):
    from prunelab import methods
    from prunelab.pruning.result import DynamicResult, SelectReport, load_result

    src = place / "code" / "tinyres.py"
    cfg = build({"model": {"builder": "tinyres:make", "input_shape": [3, 16, 16], "imports": [str(src)]}})
    method = methods.create("manidp")
    gated = method.attach(models.create(cfg.model.name, width=4))
    DynamicResult(gated, SelectReport("per input"), method.config()).save(tmp_path / "final")
    plan = json.loads((tmp_path / "final" / "plan.json").read_text())
    assert plan["model_source"] == {"builder": "tinyres:make", "input_size": [3, 16, 16]}
    assert plan["imports"] == [str(src)]
    # as a fresh process: neither the builder nor its module known
    del registry._REGISTRY["tinyres:make"]
    sys.modules.pop("tinyres")
    plugins._FILES.clear()
    back = load_result(tmp_path / "final")
    assert back.kind == "dynamic" and back.spec.input_size == (3, 16, 16) and "tinyres" in sys.modules
