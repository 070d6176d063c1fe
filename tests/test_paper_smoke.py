"""Paper-scale smoke run (issue 26, item 3): every bundled config at ``paper`` scale executes its whole
pipeline on CPU for two steps a stage, and what it saved reloads and runs on real images.

One run of ``prunelab experiment all --scale paper --smoke`` (in-process, one image per class) serves
every test here: the per-config tests read its rows, so a broken paper config fails by name. It takes
about 2 minutes on one thread, most of it BAR's wide ResNet (52 M parameters, 7.5 G MACs an image).
"""

import contextlib
import functools
import io
import json
import shutil
import time

import pytest

from prunelab.config import load_config
from prunelab.experiments import smoke
from prunelab.experiments.smoke import config_names, smoke_overrides

pytestmark = pytest.mark.smoke

STEPS = 2
IMAGES = 1  # per class: 10 training images (5 where a held-out split is taken), 10 test images
CONFIGS = config_names()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The CLI's smoke run of every config into one shared folder: exit code, printed table, rows."""
    from prunelab.cli import main

    out = tmp_path_factory.mktemp("paper-smoke")
    buf = io.StringIO()
    t0 = time.time()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setattr(smoke, "smoke_paper", functools.partial(smoke.smoke_paper, steps=STEPS, images_per_class=IMAGES))
        rc = main(["experiment", "all", "--scale", "paper", "--smoke", "--out", str(out)])
    rows = {r["name"]: r for r in json.loads((out / "smoke.json").read_text())["rows"]}
    yield {"rc": rc, "table": buf.getvalue(), "rows": rows, "seconds": time.time() - t0, "out": out}
    shutil.rmtree(out, ignore_errors=True)  # about 2 GB, mostly the wide ResNet's checkpoints


def test_there_are_paper_configs():
    assert {"resnet20", "resnet56", "bar_wrn_teacher", "bar_wrn_bar", "resnet20_manidp", "resnet20_ddnp",
            "resnet20_pfs", "vgg16_pfs", "resnet20_l1"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_runs(smoke_run, name):
    row = smoke_run["rows"].get(name)
    assert row is not None, f"{name}: no row in the smoke run"
    assert row["status"] == "ok", f"{name} at paper scale: {row['error']} ({row['where']})"
    paper = load_config(name, "paper")
    assert row["model"] == paper.model.name  # the paper's model, at its full size
    trained = [s for s, e in row["paper_epochs"].items() if isinstance(e, int)]
    if row["method"] is None:
        assert row["stages"] == ["train", "reload"] and row["result_kind"] == "dense"
        assert row["paper_epochs"] == {"train": paper.train.epochs}
    else:
        assert row["method"] == paper.method["name"]
        assert row["stages"][:3] == ["pretrain", "learn", "prune"] or row["stages"][:2] == ["pretrain", "prune"]
        assert row["stages"][-1] == "reload"
        assert ("finetune" in row["stages"]) == (row["paper_epochs"]["finetune"] != "off")
    # every stage the paper trains ran here, and stopped after STEPS optimisation steps
    assert {s: row["steps"].get(s) for s in trained if s != "pretrain"} == \
           {s: STEPS for s in trained if s != "pretrain"}, row["steps"]
    assert row["params"] > 0 and row["macs"] > 0 and row["output_shape"] == [10 * IMAGES, 10]


def test_cli_table_lists_every_config(smoke_run):
    table = smoke_run["table"]
    assert smoke_run["rc"] == 0, table
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    for name in CONFIGS:
        assert name in lines, f"{name} missing from the table:\n{table}"
        assert lines[name].rstrip().endswith("ok"), lines[name]
    assert table.splitlines()[0].split()[:3] == ["config", "method", "stages"]


def test_overrides_replace_checkpoints_and_shrink_every_stage(tmp_path):
    """Without running: the paper checkpoint becomes a random stand-in (loaded by the same path), every
    training stage gets the step limit and a batch that is its whole (tiny) training split."""
    cfg = load_config("resnet20_ddnp", "paper")
    over = smoke_overrides(cfg, steps=3, images_per_class=2, weights=tmp_path)
    assert over["stages"]["pretrain"]["init_from"] == str(tmp_path / "random-init.pt")
    assert (tmp_path / "random-init.pt").is_file()
    assert over["train"]["max_steps"] == 3 and over["train"]["device"] == "cpu"
    learn, ft = over["stages"]["learn"], over["stages"]["finetune"]
    assert learn["train"]["max_steps"] == ft["train"]["max_steps"] == 3
    # learn trains on the held-out half (DDNP's search split), finetune on all 20 images
    assert learn["data"]["holdout"] == 0.5 and learn["data"]["batch_size"] == 10
    assert ft["data"]["batch_size"] == 20 and ft["data"]["test_per_class"] == 2
    small = load_config("resnet20_ddnp", "paper", overrides=over)
    from prunelab.workflows.stages import stage_config

    assert stage_config(small, "learn").data.test_per_class == 2  # the paper's full test set is not kept
    assert stage_config(small, "finetune").train.epochs == 205  # the paper's schedule, stopped by max_steps


@pytest.mark.parametrize("argv,needle", [
    (["experiment", "all", "--scale", "paper"], "add --smoke"),
    (["experiment", "bar", "--scale", "paper", "--smoke"], "not a study"),
    (["experiment", "all", "--scale", "ci", "--smoke"], "use --scale paper"),
    (["experiment", "all", "--smoke", "--parts", "resnet2"], "Did you mean 'resnet20'"),
])
def test_cli_smoke_refuses_bad_input(argv, needle, capsys):
    from prunelab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().count("\n") == 0


def test_a_failing_config_is_reported_and_the_others_go_on(capsys):
    """A config that fails (here: its reload check, patched to raise) gets its error line and where it
    came from; the next config still runs; the command prints the error under the table and exits 1."""
    from prunelab.cli import main

    real = smoke._forward_check

    def broken(run, dense):
        if run.name == "resnet20":
            raise RuntimeError("reload\nbroken")
        return real(run, dense)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(smoke, "_forward_check", broken)
        rows = smoke.smoke_paper(["resnet20", "resnet20_l1"], steps=1, images_per_class=1)
        assert [r["status"] for r in rows] == ["failed", "ok"]
        assert rows[0]["error"] == "RuntimeError: reload broken" and rows[0]["where"].startswith("smoke.py:")
        assert rows[0]["stages"] == ["train"] and rows[1]["steps"] == {"finetune": 1}
        mp.setattr(smoke, "smoke_paper", functools.partial(smoke.smoke_paper, steps=1, images_per_class=1))
        assert main(["experiment", "all", "--smoke", "--parts", "resnet20"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "resnet20: RuntimeError: reload broken" in out
