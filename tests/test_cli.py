"""Bad input through the CLI: one line on stderr, exit code 2, no traceback, nothing overwritten."""

import os
import subprocess
import sys

import pytest

PY = sys.executable


def cli(*args):
    return subprocess.run([PY, "-m", "prunelab.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args,needle", [
    (("train", "resnet2"), "Did you mean 'resnet20'"),
    (("train", "resnet20", "--set", "optim.lr=-1"), "optim.lr must be > 0"),
    (("train", "resnet20", "--set", "train.epochs=0"), "train.epochs must be >= 1"),
    (("train", "resnet20", "--set", "model.name=vgg19"), "unknown model 'vgg19'"),
    (("prune", "resnet20_l1", "--set", "budget.keep=1.5"), "budget.keep must be in (0, 1]"),
    (("prune", "resnet20_l1", "--set", "method.name=magnitude"), "unknown method 'magnitude'"),
    (("prune", "resnet20_l1", "--set", "stages.finetun.train.epochs=1"), "unknown stage 'finetun'"),
    (("count", "resnet99"), "unknown model"),
    (("info", "/nonexistent/run"), "not a prunelab run directory"),
    (("experiment", "ddpn"), "unknown experiment 'ddpn'. Did you mean 'ddnp'"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = cli(*args, "--scale", "ci") if args[0] in ("train", "prune", "experiment") else cli(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_count_and_list():
    r = cli("count", "bar_wrn")
    assert "7,543.91 M" in r.stdout.replace("7543.91", "7,543.91") and "V 3,112,960" in r.stdout
    assert "resnet56" in cli("list", "models").stdout
    assert "bar" in cli("list", "methods").stdout.split()
    assert "resnet20_l1" in cli("list", "configs").stdout.split()
