"""Ray and Slurm (submitit) executors (prunelab.experiments.engines) run real ci-scale sub-runs and give
the same results as the in-process SequentialExecutor.

The engines are optional extras (``prunelab[ray]``, ``prunelab[slurm]``): their tests skip without them.
The ``slurm`` test starts a private single-node Slurm (slurmctld + slurmd, and munged when none runs)
as root, with its config, state and logs in a temporary folder, and stops exactly the processes it
started (docs: /work/shared/design/slurm-single-node.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelab.errors import ConfigError, PrunelabError
from prunelab.experiments import engines
from prunelab.experiments.executors import SequentialExecutor
from prunelab.experiments.tasks import Task, TaskFailed

TIMINGS = {"wall_time_s", "train_time_s", "epoch_time_s", "images_per_s", "environment", "resumed"}


def _cfg(seed: int):
    from prunelab.config import load_config

    return load_config("resnet20", "ci", overrides={"train": {"epochs": 1, "progress": False, "seed": seed}})


def _tasks(root: Path) -> list[Task]:
    """Two tiny dense trainings (5 steps of ResNet-20 on the ci subset) that differ by their seed."""
    return [Task("engines", f"seed{s}", "train", _cfg(s), str(root / f"seed{s}"), str(root / "logs" / f"seed{s}.log"))
            for s in (0, 1)]


def _broken_task(root: Path) -> Task:
    """A pruning run whose starting checkpoint does not exist: the worker fails with a traceback."""
    from prunelab.config import load_config

    cfg = load_config("resnet20_l1", "ci", overrides={"stages": {"pretrain": {"init_from": str(root / "missing.pt")}}})
    return Task("engines", "broken", "pipeline", cfg, str(root / "broken"), str(root / "logs" / "broken.log"))


def _comparable(run_dir) -> dict:
    """result.json without timings and environment (they differ between two runs of the same sub-run)."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in TIMINGS}
        if isinstance(d, list):
            return [strip(v) for v in d]
        return d

    return strip(json.loads((Path(run_dir) / "result.json").read_text()))


def _run_all(ex, tasks, timeout: float = 120.0) -> dict:
    """Submit ``tasks``, wait for all of them; {name: run_dir or the exception ``result`` raised}."""
    handles = [ex.submit(t) for t in tasks]
    pending, out = list(handles), {}
    deadline = time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, f"tasks still running after {timeout} s: {pending}"
        for h in ex.wait(pending, timeout=5):
            pending.remove(h)
            try:
                out[h.task.name] = ex.result(h)
            except Exception as e:  # noqa: BLE001 - checked by the caller
                out[h.task.name] = e
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The two tasks' results from the in-process SequentialExecutor."""
    root = tmp_path_factory.mktemp("sequential")
    ex = SequentialExecutor()
    dirs = _run_all(ex, _tasks(root))
    assert all(isinstance(d, str) for d in dirs.values()), dirs
    res = {name: _comparable(d) for name, d in dirs.items()}
    assert res["seed0"]["final"]["test_acc"] is not None and res["seed0"] != res["seed1"]
    return res


def _check_like_reference(dirs: dict, tasks, reference):
    for t in tasks:
        assert dirs[t.name] == t.run_dir, dirs[t.name]
        assert (Path(t.run_dir) / "result.json").is_file()
        assert _comparable(t.run_dir) == reference[t.name], t.name
        assert f"done: engines/{t.name}" in Path(t.log).read_text()


def _check_broken(err, task: Task):
    assert isinstance(err, TaskFailed), err
    assert err.name == "broken" and Path(err.log).is_file() and Path(err.log) == Path(task.log).absolute()
    log = Path(err.log).read_text()
    assert "Traceback (most recent call last)" in log and "CheckpointError" in log and "missing.pt" in log
    assert "exited with code 1" in err.reason
    return err


# ---------------------------------------------------------------------------------------------------
# make(): options and missing engines (no engine needed)


def test_make_rejects_unknown_options_and_engines():
    with pytest.raises(ConfigError, match=r"ray executor: unknown option\(s\) partition; valid options: address, "
                                          r"cpus_per_task, gpus_per_task"):
        engines.make("ray", workers=2, partition="gpu")
    with pytest.raises(ConfigError, match=r"slurm executor: unknown option\(s\) adress; valid options: folder.*"
                                          r"poll_s and slurm_\* submitit parameters"):
        engines.make("slurm", folder="x", adress="h")
    with pytest.raises(ConfigError, match="needs folder="):
        engines.make("slurm", partition="debug")
    with pytest.raises(ConfigError, match="unknown executor engine 'dask'"):
        engines.make("dask")


def test_missing_engine_package_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ConfigError, match=r"^ray is not installed: pip install 'prunelab\[ray\]'$"):
        engines.make("ray")
    with pytest.raises(ConfigError, match=r"^submitit is not installed: pip install 'prunelab\[slurm\]'$"):
        engines.make("slurm", folder=tmp_path)


def test_slurm_options_file_and_flags(monkeypatch, tmp_path):
    pytest.importorskip("submitit")
    monkeypatch.setattr(engines.shutil, "which", lambda name: "/usr/bin/" + name)  # no sbatch is run here
    opts = tmp_path / "slurm.yaml"
    opts.write_text("partition: gpu\ntime_min: 30\ncpus_per_task: 4\ngpus_per_task: 1\nmem_gb: 8\n"
                    "slurm_additional_parameters: {account: proj42, qos: short}\n")
    ex = engines.SlurmExecutor(tmp_path / "jobs", options_file=opts, cpus_per_task=2,
                               slurm_additional_parameters={"qos": "long"}, slurm_constraint="a100")
    assert (ex.cpus_per_task, ex.gpus_per_task, ex.time_min, ex.slots) == (2, 1, 30, engines.SLURM_DEFAULT_SLOTS)
    script = ex._ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=30", "--cpus-per-task=2", "--gpus-per-node=1", "--mem=8GB",
                 "--account=proj42", "--qos=long", "--constraint=a100"):
        assert f"#SBATCH {line}" in script, (line, script)

    opts.write_text("partition: gpu\nnodes: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) nodes; valid keys: partition, time_min"):
        engines.SlurmExecutor(tmp_path / "jobs", options_file=opts)
    with pytest.raises(ConfigError, match="cpus_per_task must be >= 1"):
        engines.SlurmExecutor(tmp_path / "jobs", cpus_per_task=0)
    with pytest.raises(ConfigError, match="slurm executor: .*Unknown argument 'bogus'"):
        engines.SlurmExecutor(tmp_path / "jobs", slurm_bogus=1)
    monkeypatch.setattr(engines.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch not found"):
        engines.SlurmExecutor(tmp_path / "jobs", partition="debug")


# ---------------------------------------------------------------------------------------------------
# Ray


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _FakeRay:
    """Just enough of ``ray`` to check how RayExecutor starts, sizes and stops it."""

    def __init__(self, initialized: bool, resources: dict):
        self.initialized, self.resources, self.calls = initialized, resources, []

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.calls.append(("init", kw))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown", {}))
        self.initialized = False

    def cluster_resources(self):
        return self.resources

    def remote(self, fn):
        fake = self

        class Remote:
            def options(self, **kw):
                fake.calls.append(("options", kw))
                return self

        return Remote()


def test_ray_executor_sizing_and_ownership(monkeypatch):
    import logging

    fake = _FakeRay(initialized=True, resources={"CPU": 16.0, "GPU": 2.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    ex = engines.RayExecutor(cpus_per_task=4)  # a Ray this process already started: used, left running
    assert (ex.slots, ex.gpus_per_task) == (4, 1)
    assert ("options", {"num_cpus": 4, "num_gpus": 1, "name": "prunelab-subrun"}) in fake.calls
    ex.close()
    assert fake.initialized and not [c for c in fake.calls if c[0] in ("init", "shutdown")]

    fake = _FakeRay(initialized=False, resources={"CPU": 6.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ex = engines.make("ray", workers=3, cpus_per_task=2)  # a local instance: workers * cpus_per_task CPUs
    assert fake.calls[0] == ("init", {"address": "local", "num_cpus": 6, "include_dashboard": False,
                                      "logging_level": logging.ERROR, "log_to_driver": False})
    assert (ex.slots, ex.gpus_per_task) == (3, 0)
    ex.close()
    assert fake.calls[-1][0] == "shutdown" and not fake.initialized

    fake = _FakeRay(initialized=False, resources={"CPU": 64.0, "GPU": 8.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    ex = engines.make("ray", address="ray://head:10001", gpus_per_task=0)  # an existing cluster
    assert fake.calls[0] == ("init", {"address": "ray://head:10001", "logging_level": logging.WARNING,
                                      "log_to_driver": False})
    assert (ex.slots, ex.gpus_per_task) == (64, 0)


def test_ray_runs_tasks_like_sequential_and_reports_failures(tmp_path, reference):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    before = _descendants(os.getpid())
    ex = engines.RayExecutor(workers=2)
    try:
        assert ray.is_initialized() and ex.slots == 2 and ex.gpus_per_task == 0
        tasks, broken = _tasks(tmp_path), _broken_task(tmp_path)
        out = _run_all(ex, tasks + [broken])
        _check_like_reference(out, tasks, reference)
        _check_broken(out["broken"], broken)
        started = _descendants(os.getpid()) - before  # gcs_server, raylet, workers...
        assert started
    finally:
        ex.close()
    assert not ray.is_initialized()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in started if _alive(p)], "ray processes left after close()"


# ---------------------------------------------------------------------------------------------------
# Slurm through submitit: its local executor (no Slurm needed), then a real single-node Slurm


def test_submitit_local_cluster_runs_tasks_like_sequential(tmp_path, reference):
    pytest.importorskip("submitit")
    ex = engines.make("slurm", workers=2, folder=tmp_path / "submitit", cluster="local", cpus_per_task=1, poll_s=0.5)
    try:
        assert ex.slots == 2
        tasks, broken = _tasks(tmp_path), _broken_task(tmp_path)
        out = _run_all(ex, tasks + [broken])
        _check_like_reference(out, tasks, reference)
        err = _check_broken(out["broken"], broken)
        assert "stderr: " in err.reason and str(tmp_path / "submitit") in err.reason
    finally:
        ex.close()


def _wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def _ok(cmd, env=None, timeout: float = 20) -> bool:
    try:
        return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, timeout=timeout,
                              env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ctld_up(env) -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20, env=env).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return " is UP" in out


def _node_state(env) -> str:
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20,
                              env=env).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A private single-node Slurm: yields the environment (``SLURM_CONF``) its clients need, set in
    ``os.environ`` while it runs. Starts munged (unless one answers), slurmctld and slurmd in the
    foreground (``-D``) and stops exactly those processes afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (slurmd runs the jobs as root)")
    if not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _ok("apt-get update -q", env, timeout=300)
        if not _ok("apt-get install -y -q slurm-wlm munge", env, timeout=600):
            pytest.skip("cannot install slurm-wlm and munge with apt-get")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log", "run"):
        (root / d).mkdir()
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024)
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=prunelabtest
SlurmctldHost={host}
SlurmUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=sched_interval=1
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    if _ctld_up(env):
        pytest.skip("a Slurm controller already runs on this machine's ports; not starting a second one")
    started: list[subprocess.Popen] = []
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    old_conf = os.environ.get("SLURM_CONF")
    try:
        try:
            if not _ok("munge -n | unmunge"):
                for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
                    os.makedirs(d, exist_ok=True)
                if not os.path.exists("/etc/munge/munge.key"):
                    subprocess.run(["mungekey", "-c"], check=True, capture_output=True)
                subprocess.run(["chown", "-R", "munge:munge", "/etc/munge", "/run/munge", "/var/lib/munge",
                                "/var/log/munge"], check=True)
                os.chmod("/etc/munge/munge.key", 0o400)
                started.append(subprocess.Popen(["munged", "-F"], user="munge", group="munge", **quiet))
                _wait_for(lambda: _ok("munge -n | unmunge"), 15, "munged")
            started.append(subprocess.Popen(["slurmctld", "-D", "-c", "-f", str(conf)], **quiet))
            _wait_for(lambda: _ctld_up(env), 30, "slurmctld")
            started.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], **quiet))
            _wait_for(lambda: _node_state(env) in ("idle", "mix", "alloc"), 30, "the node to be idle")
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            logs = "".join(p.read_text()[-1500:] for p in sorted((root / "log").glob("*.log")))
            pytest.skip(f"cannot start a private Slurm: {e}\n{logs}")
        os.environ["SLURM_CONF"] = str(conf)
        yield env
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        for p in reversed(started):  # slurmd, slurmctld, munged: by the ids we started
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.mark.slurm
def test_real_slurm_runs_tasks_like_sequential(slurm_cluster, tmp_path, reference):
    pytest.importorskip("submitit")
    ex = engines.SlurmExecutor(folder=tmp_path / "slurm", partition="debug", cpus_per_task=1, time_min=10, poll_s=1)
    try:
        tasks, broken = _tasks(tmp_path), _broken_task(tmp_path)
        handles_before = len(ex._handles)
        out = _run_all(ex, tasks + [broken])
        assert len(ex._handles) == handles_before + 3
        assert ex._ex.cluster == "slurm"
        for h in ex._handles:  # real Slurm jobs: the controller knows them
            info = subprocess.run(["scontrol", "show", "job", h.ref.job_id], capture_output=True, text=True).stdout
            assert f"JobName=engines-{h.task.name}" in info and "Partition=debug" in info, info
        _check_like_reference(out, tasks, reference)
        err = _check_broken(out["broken"], broken)
        assert f"stderr: {tmp_path / 'slurm'}" in err.reason
    finally:
        ex.close()
    bad = engines.SlurmExecutor(folder=tmp_path / "slurm", partition="nope")
    with pytest.raises(PrunelabError, match=r"slurm refused the job of sub-run engines/seed0: .*invalid partition"):
        bad.submit(tasks[0])


# ---------------------------------------------------------------------------------------------------
# a whole study through each engine: the tiny three-sub-run study of tests/test_runner.py (a dense run,
# a pruning run from it, one whose config reads the latter's record), against its sequential run


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from prunelab.experiments import runner as R
    from test_runner import Tiny

    R.register_study("tiny-engines")(Tiny)
    Tiny.broken = False
    tmp = tmp_path_factory.mktemp("tiny-seq")
    seq = R.Runner("tiny-engines", "ci", tmp / "runs", results=tmp / "tiny.json", quiet=True).run()
    yield seq
    R.STUDIES.pop("tiny-engines", None)


def _study_through(ex, tmp_path):
    from prunelab.experiments import runner as R

    try:
        return R.Runner("tiny-engines", "ci", tmp_path / "runs", results=tmp_path / "tiny.json", quiet=True,
                        executor=ex).run()
    finally:
        ex.close()


def test_a_local_ray_instance_runs_a_study_like_the_sequential_run(tiny_study, tmp_path):
    pytest.importorskip("ray")
    res = _study_through(engines.RayExecutor(workers=2), tmp_path)
    assert res["complete"] and res["acc"] == tiny_study["acc"] and res["widths"] == tiny_study["widths"]


@pytest.mark.slurm
def test_a_real_slurm_runs_a_study_like_the_sequential_run(slurm_cluster, tiny_study, tmp_path):
    pytest.importorskip("submitit")
    ex = engines.SlurmExecutor(folder=tmp_path / "slurm", partition="debug", cpus_per_task=1, time_min=10, poll_s=1)
    res = _study_through(ex, tmp_path)
    assert res["complete"] and res["acc"] == tiny_study["acc"] and res["widths"] == tiny_study["widths"]
