"""The wheel installs into a fresh virtual environment without extras, and the command line runs there.

Core dependencies are what the library and every ``prunelab`` command import; plots, widgets and
notebooks need the ``notebooks`` extra (pyproject.toml). This test holds that split: it builds the
wheel from a copy of the sources, installs it with no extras next to torch and torchvision in a new
venv, runs ``prunelab count resnet20`` and a ``--scale ci`` training there, and checks that the
notebook-only packages are absent (so the run above did not need them).

Duration on this 2-core machine, with other jobs on both cores: about 3 min 10 s. The test itself
1 min 45 s (python -m venv; ``pip install --no-compile torch torchvision`` copying the CUDA build,
5.5 GB, from pip's local files, the longest step; the wheel and its core dependencies; count and the
ci training, 25 s), then 1 min 25 s to delete the venv. Needs about 6 GB free in the temp folder.
"""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_ONLY = ("seaborn", "ipywidgets", "jupyterlab", "matplotlib", "nbclient", "IPython")


def _run(cmd, *, timeout, cwd, env=None):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def _tail(r, n=25):
    return "\n".join((r.stdout + r.stderr).strip().splitlines()[-n:])


def _data_folder() -> str:
    """The CIFAR-10 folder the tests use, as PRUNELAB_DATA (the installed package is not beside
    ../shared/datasets, so it would not find it there on its own)."""
    from prunelab.data.cifar import _locate
    from prunelab.errors import DataError

    try:
        kind, path = _locate(None)
    except DataError as e:
        pytest.skip(f"CIFAR-10 not available: {e}")
    return str(path.parent if kind == "jpeg-archive" else path)


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="prunelab-install-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)  # the venv holds several GB


@pytest.mark.slow
def test_wheel_installs_and_runs_without_extras(workdir):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (needed to build without isolation)")
    data = _data_folder()

    # 1. the wheel, built from a copy so that build/ and *.egg-info never land in the checkout
    src = workdir / "src"
    shutil.copytree(REPO / "prunelab", src / "prunelab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", workdir / "dist", src],
             timeout=300, cwd=workdir)
    assert r.returncode == 0, _tail(r)
    (wheel,) = (workdir / "dist").glob("prunelab-*.whl")

    # 2. a fresh venv with this environment's torch and torchvision
    venv = workdir / "venv"
    r = _run([sys.executable, "-m", "venv", venv], timeout=300, cwd=workdir)
    if r.returncode != 0:
        pytest.skip(f"cannot create a virtual environment: {_tail(r, 5)}")
    py = venv / "bin" / "python"
    torch_pins = [f"{d}=={importlib.metadata.version(d)}" for d in ("torch", "torchvision")]
    r = _run([py, "-m", "pip", "install", "-q", "--no-compile", *torch_pins], timeout=1800, cwd=workdir)
    if r.returncode != 0:
        pytest.skip(f"cannot install {' '.join(torch_pins)} into a fresh venv: {_tail(r, 5)}")

    # 3. the wheel, no extras: pip resolves the core dependencies itself
    r = _run([py, "-m", "pip", "install", "-q", "--no-compile", wheel], timeout=900, cwd=workdir)
    assert r.returncode == 0, _tail(r)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MPLBACKEND")}
    env.update(OMP_NUM_THREADS="1", PRUNELAB_SCALE="ci", PRUNELAB_DATA=data)
    prunelab = venv / "bin" / "prunelab"

    # the installed package (not the checkout) imports without the notebook-only packages, which fail
    probe = ("import prunelab, prunelab.cli, prunelab.analysis.bar, prunelab.analysis.hard_concrete, prunelab.published\n"
             "print(prunelab.__file__)\n"
             "imported = []\n"
             f"for m in {NOTEBOOK_ONLY!r}:\n"
             "    try:\n"
             "        __import__(m)\n"
             "    except ModuleNotFoundError:\n"
             "        continue\n"
             "    imported.append(m)\n"
             "print(','.join(imported))\n")
    r = _run([py, "-c", probe], timeout=300, cwd=workdir, env=env)
    assert r.returncode == 0, _tail(r)
    where, imported = r.stdout.splitlines()[-2:]
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    assert imported == "", f"importable without the notebooks extra: {imported}"

    r = _run([prunelab, "count", "resnet20"], timeout=300, cwd=workdir, env=env)
    assert r.returncode == 0, _tail(r)
    assert "resnet20: MACs 40.55 M" in r.stdout

    out = workdir / "run"
    r = _run([prunelab, "train", "resnet20", "--scale", "ci", "--out", out], timeout=900, cwd=workdir, env=env)
    assert r.returncode == 0, _tail(r)
    assert (out / "result.json").is_file() and (out / "model.pt").is_file()
