import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab import models
from prunelab.config import TrainConfig, load_config
from prunelab.errors import CheckpointError, ConfigError, RunDirError
from prunelab.hooks import Hook, hook_state_keys
from prunelab.train.rundir import RunDir, load_checkpoint, summed_epoch_time
from prunelab.train.run import train
from prunelab.train.trainer import Trainer, load_weights

PY = sys.executable
TIME_KEYS = {"epoch_time_s", "images_per_s"}


def tiny(sets=(), out=None):
    base = ["data.train_per_class=20", "data.test_per_class=5", "data.batch_size=20", "train.epochs=3",
            "train.deterministic=true", "train.checkpoint_every_steps=4", "train.progress=false"]
    return load_config("resnet20", "ci", base + list(sets))


def cli(args, env=None, check=True):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([PY, "-m", "prunelab.cli", *args], capture_output=True, text=True, env=e, check=check)


def test_training_learns_on_real_data(tmp_path):
    cfg = load_config("resnet20", "ci", ["data.train_per_class=50", "data.test_per_class=20", "train.epochs=4",
                                          "data.batch_size=50", "optim.lr=0.05", "train.progress=false"])
    res = train(cfg, tmp_path / "r", quiet=True)
    hist = _log(tmp_path / "r")
    assert len(hist) == 4 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert res["final"]["test_acc"] > 0.15  # 10 classes: chance is 0.10
    payload = load_checkpoint(tmp_path / "r" / "model.pt")
    assert payload["model_name"] == "resnet20"


def _final_state(run):
    return load_checkpoint(Path(run) / "model.pt")["state_dict"]


def _log(run):
    return [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _metrics(run):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in _log(run)]


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    sets = ["data.train_per_class=20", "data.test_per_class=5", "data.batch_size=20", "train.epochs=3",
            "train.deterministic=true", "train.checkpoint_every_steps=4", "train.progress=false"]
    common = ["train", "resnet20", "--scale", "ci", *sum([["--set", s] for s in sets], [])]
    cli(common + ["--out", str(tmp_path / "straight")])
    killed = cli(common + ["--out", str(tmp_path / "killed")], env={"PRUNELAB_TEST_SIGKILL_AT_STEP": "15"},
                 check=False)
    assert killed.returncode == -9  # died by SIGKILL in epoch 2 (10 steps per epoch)
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert len(_metrics(tmp_path / "killed")) == 1
    r = cli(common + ["--out", str(tmp_path / "killed")], check=False)
    assert "already holds a run" in r.stderr and r.returncode == 2  # no silent overwrite
    resumed = cli(common + ["--out", str(tmp_path / "killed"), "--resume"])
    assert "over all resumed processes" in resumed.stdout
    res = json.loads((tmp_path / "killed" / "result.json").read_text())
    epoch_times = [r["epoch_time_s"] for r in _log(tmp_path / "killed")]
    assert res["resumed"] and len(epoch_times) == 3
    assert res["train_time_s"] == pytest.approx(sum(epoch_times))  # epoch 1 ran in the killed process
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "killed")


def test_summed_epoch_time_counts_a_relogged_epoch_once():
    rows = [{"epoch": 1, "epoch_time_s": 10.0}, {"epoch": 2, "epoch_time_s": 4.0},
            {"epoch": 2, "epoch_time_s": 5.0}, {"stage": "finetune", "epoch": 1, "epoch_time_s": 2.0}]
    assert summed_epoch_time(rows) == 17.0


def test_resume_with_other_config_is_refused(tmp_path):
    train(tiny(["train.epochs=1"]), tmp_path / "r", quiet=True)
    with pytest.raises(RunDirError, match="model.name"):
        train(tiny(["train.epochs=1", "model.name=resnet32"]), tmp_path / "r", resume=True, quiet=True)
    r = cli(["train", "resnet20", "--scale", "ci", "--out", str(tmp_path / "r"), "--resume", "--set", "model.name=resnet32"],
            check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot resume" in r.stderr


def test_force_moves_old_run_aside(tmp_path):
    train(tiny(["train.epochs=1"]), tmp_path / "r", quiet=True)
    train(tiny(["train.epochs=1"]), tmp_path / "r", force=True, quiet=True)
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("r.old-")]
    assert len(backups) == 1 and (backups[0] / "model.pt").exists()


def test_second_writer_is_refused(tmp_path):
    with RunDir(tmp_path / "r"):
        code = ("from prunelab.train.rundir import RunDir; import sys\n"
                f"RunDir({str(tmp_path / 'r')!r}, resume=True)")
        r = subprocess.run([PY, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0 and "in use by another process" in r.stderr


def test_weights_of_another_model_are_refused(tmp_path):
    train(tiny(["train.epochs=1"]), tmp_path / "r", quiet=True)
    with pytest.raises(CheckpointError, match="resnet20"):
        load_weights(models.create("resnet56"), tmp_path / "r" / "model.pt")
    with pytest.raises(CheckpointError, match="width"):
        load_weights(models.create("resnet20", width=32), tmp_path / "r" / "model.pt")
    load_weights(models.create("resnet20"), tmp_path / "r")  # a run dir means its model.pt
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    r = cli(["train", "resnet20", "--scale", "ci", "--out", str(tmp_path / "x"), "--set", f"train.init_from={bad}"],
            check=False)
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_keep_epochs_snapshots(tmp_path):
    train(tiny(["train.epochs=2", "train.keep_epochs=[0,2]"]), tmp_path / "r", quiet=True)
    s0 = load_checkpoint(tmp_path / "r" / "epoch_0.pt")["state_dict"]
    s2 = load_checkpoint(tmp_path / "r" / "epoch_2.pt")["state_dict"]
    fin = load_checkpoint(tmp_path / "r" / "model.pt")["state_dict"]
    assert torch.equal(s2["fc.weight"], fin["fc.weight"]) and not torch.equal(s0["fc.weight"], fin["fc.weight"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                        str(worker), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a["world"] == 2 and a["batch_per_rank"] == 8 and a["changed"]
    assert len(a["params"]) == len(list(models.create("resnet20").parameters()))
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


def test_ddp_synchronises_a_method_controller(tmp_path):
    """A controller (generator) is a submodule of the gated model: DDP averages its gradients too."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                        str(worker), str(tmp_path), "controller"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    ctrl = [k for k in a["params"] if k.startswith("controller.")]
    assert ctrl and a["changed"]
    init = ToyGeneratedInit()
    assert any(not torch.equal(a["params"][k], init[k]) for k in ctrl)  # the controller learned
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


def ToyGeneratedInit():
    from test_result_kinds import ToyGenerated

    torch.manual_seed(0)
    return {n: p.detach().clone() for n, p in ToyGenerated().attach(models.create("resnet20")).named_parameters()}


def test_force_backups_get_unique_names_within_one_second(tmp_path):
    from prunelab.utils import move_aside

    names = set()
    for i in range(3):
        d = tmp_path / "run"
        d.mkdir()
        (d / "config.yaml").write_text(f"n: {i}\n")
        names.add(move_aside(d).name)
    assert len(names) == 3  # three moves in (almost surely) the same second, three names
    assert sorted((tmp_path / n / "config.yaml").read_text() for n in names) == ["n: 0\n", "n: 1\n", "n: 2\n"]


def test_force_checks_free_space_before_moving_anything(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from prunelab.errors import RunDirError
    from prunelab.utils import move_aside

    d = tmp_path / "run"
    d.mkdir()
    (d / "model.pt").write_bytes(b"x" * 4096)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(RunDirError, match="MiB free"):
        move_aside(d)
    assert (d / "model.pt").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


# -- hook state in checkpoints: by state_key --------------------------------------------------------
class _Counter(Hook):
    """Adds ``bump`` to its state every training step (distinct bumps tell the hooks' states apart)."""

    def __init__(self, bump=1):
        self.bump, self.count = bump, 0

    def after_step(self, trainer, batch):
        self.count += self.bump

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class _OtherCounter(_Counter):
    pass


class _TinyLoader:
    """Two fixed batches of 12 features, in the trainer's loader interface."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randn(4, 12, generator=g), torch.randint(0, 3, (4,), generator=g),
                      torch.arange(4 * i, 4 * i + 4)) for i in range(2)]

    def set_epoch(self, epoch):
        pass

    def batches(self, start=0):
        yield from self.data[start:]

    def __len__(self):
        return len(self.data)


def _hook_trainer(run, hooks):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, progress=False, channels_last=False, device="cpu")
    return Trainer(torch.nn.Linear(12, 3), _TinyLoader(), train_cfg=cfg, run=run, hooks=hooks, device="cpu")


def _train_with(path, hooks):
    """One epoch (two steps) with ``hooks``; leaves ``checkpoint.pt`` in ``path``."""
    with RunDir(path, quiet=True) as run:
        _hook_trainer(run, hooks).fit()


def _resume_with(path, hooks):
    with RunDir(path, resume=True) as run:
        _hook_trainer(run, hooks).load_state()
    return [h.count for h in hooks]


def test_hook_state_keys_number_shared_keys_in_order():
    assert hook_state_keys([_Counter(), _OtherCounter(), _Counter()]) == ["_Counter#1", "_OtherCounter", "_Counter#2"]


def test_hook_state_is_restored_by_key_in_another_order(tmp_path):
    _train_with(tmp_path / "r", [_Counter(1), _Counter(5), _OtherCounter(10)])
    saved = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["hooks"]
    assert saved == {"_Counter#1": {"count": 2}, "_Counter#2": {"count": 10}, "_OtherCounter": {"count": 20}}
    # the other class moved first: it gets its own state, the two counters keep theirs (their order kept)
    assert _resume_with(tmp_path / "r", [_OtherCounter(10), _Counter(1), _Counter(5)]) == [20, 2, 10]


@pytest.mark.parametrize("hooks, only", [
    ([_Counter(), _OtherCounter(), Hook()], "only in this run: Hook"),  # an extra hook
    ([_Counter()], "only in the checkpoint: _OtherCounter"),  # a missing one
])
def test_resume_with_other_hooks_is_one_clear_error(tmp_path, hooks, only):
    _train_with(tmp_path / "r", [_Counter(), _OtherCounter()])
    with pytest.raises(ConfigError, match=only) as e:
        _resume_with(tmp_path / "r", hooks)
    assert "\n" not in str(e.value) and "--force" in str(e.value) and "same method and hooks" in str(e.value)


def test_old_checkpoint_with_hook_states_by_position_still_resumes(tmp_path):
    _train_with(tmp_path / "r", [_Counter(1), _OtherCounter(10)])
    ckpt = tmp_path / "r" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state["hooks"] = [state["hooks"]["_Counter"], state["hooks"]["_OtherCounter"]]  # the format before state_key
    torch.save(state, ckpt)
    assert _resume_with(tmp_path / "r", [_Counter(1), _OtherCounter(10)]) == [2, 20]
    with pytest.raises(ConfigError, match="holds the state of 2 hook.*this run has 1 .*--force"):
        _resume_with(tmp_path / "r", [_Counter(1)])
