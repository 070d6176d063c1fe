"""Ray and Slurm (submitit) executors for a study's sub-runs.

Both follow the executor protocol of :mod:`.executors` (``slots``, ``submit``, ``wait``, ``result``,
``close``) and run every :class:`~.tasks.Task` the same way as :class:`~.executors.LocalExecutor`: in a
fresh process ``python -m prunelab.experiments.tasks TASK.pkl`` whose stdout and stderr go to the
task's log file (so a crash, even a segfault, cannot take down the engine's worker, and the log holds
the whole traceback). Its exit code (0 ok, 3 run directory busy, anything else failed) becomes the
result, :class:`~prunelab.errors.RunDirBusyError` or :class:`~.tasks.TaskFailed` when ``result`` is
called. The engines are optional: ``pip install 'prunelab[ray]'`` / ``'prunelab[slurm]'``; each is
imported only when its executor is built, and a missing one is a :class:`~prunelab.errors.ConfigError`.

Both need the run directories on a file system that the submitting process and the workers share
(one machine, or a cluster's shared home / scratch), and the same Python environment on the workers.

Ray — ``make("ray", workers=..., address=..., cpus_per_task=..., gpus_per_task=...)``:

* ``address``: an existing Ray cluster (``"ray://head:10001"``, ``"auto"``, ``"head:6379"``). Without
  it (and without ``$RAY_ADDRESS``) the executor starts a local Ray instance with
  ``workers * cpus_per_task`` CPUs (default: every core), no dashboard and quiet logging, and
  ``close()`` shuts it down again. A Ray already initialised in this process is used as it is and
  left running.
* ``workers``: how many sub-runs run at once (default: the cluster's CPUs // ``cpus_per_task``).
* ``cpus_per_task`` (1): CPU threads of each sub-run (``OMP_NUM_THREADS`` and ``torch`` threads) and
  the CPUs Ray reserves for it.
* ``gpus_per_task``: GPUs per sub-run (default 1 when the cluster has GPUs, else 0); Ray sets
  ``CUDA_VISIBLE_DEVICES``.

Slurm — ``make("slurm", workers=..., folder=..., partition=..., ...)``: one Slurm job per sub-run,
submitted with submitit (``sbatch``); the job runs the worker process above.

* ``folder`` (required): where submitit writes job scripts, pickles and the jobs' own stdout/stderr
  (``%j_0_log.out`` / ``.err``); put it on the shared file system, e.g. ``<study out>/slurm``.
* ``partition``, ``time_min`` (60; a job that hits it is requeued and the sub-run resumes from its last
  checkpoint), ``cpus_per_task`` (1), ``gpus_per_task`` (0), ``mem_gb`` (the partition's default).
* ``options_file``: a YAML file with any of ``partition``, ``time_min``, ``cpus_per_task``,
  ``gpus_per_task``, ``mem_gb``, ``slurm_additional_parameters`` (a mapping of extra ``#SBATCH``
  options, e.g. ``{account: proj42, qos: short}``) and other ``slurm_*`` keys. Options given directly
  override the file's.
* ``slurm_*``: any other submitit Slurm parameter (``slurm_account``, ``slurm_qos``,
  ``slurm_constraint``, ``slurm_additional_parameters``, ...), passed to ``update_parameters``.
* ``workers``: at most this many jobs queued or running at once (default 64; 1 with ``cluster="debug"``,
  the CPU count // ``cpus_per_task`` with ``cluster="local"``).
* ``cluster``: ``"slurm"`` (default), or submitit's ``"local"`` (jobs as processes on this machine) or
  ``"debug"`` (in this process): for tests and trying a setup without Slurm.
* ``poll_s`` (5): how often ``wait`` asks whether a job finished.

Example: ``prunelab.experiments.executors.make_executor("slurm", workers=20, options={"folder":
"runs/bar/slurm", "partition": "gpu", "gpus_per_task": 1, "cpus_per_task": 8, "time_min": 240})``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from .tasks import Task, TaskFailed, write_task

BUSY_EXIT = 3
RAY_OPTIONS = ("address", "cpus_per_task", "gpus_per_task")
SLURM_OPTIONS = ("folder", "partition", "time_min", "cpus_per_task", "gpus_per_task", "mem_gb", "options_file",
                 "cluster", "poll_s")
SLURM_FILE_KEYS = ("partition", "time_min", "cpus_per_task", "gpus_per_task", "mem_gb", "slurm_additional_parameters")
SLURM_DEFAULT_SLOTS = 64
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the prunelab package


# ---------------------------------------------------------------------------------------------------
# the worker process (runs inside a Ray task or a Slurm job)


def _set_parent_death_signal():  # pragma: no cover - runs in the child before exec
    """Linux: the worker process gets SIGTERM when the engine's process that started it dies (a cancelled
    Ray task, a Slurm job that timed out), so it never holds the run directory's lock as an orphan."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_task_process(task: Task, source_root: str | None = None) -> int:
    """Run ``task`` as ``python -m prunelab.experiments.tasks TASK.pkl`` with its output appended to
    ``task.log``; return the exit code (0 ok, 3 busy, else failed).

    ``OMP_NUM_THREADS`` is ``task.cpus``; with ``task.gpus == 0`` no CUDA device is visible, else the
    ``CUDA_VISIBLE_DEVICES`` the engine set is kept. ``source_root`` (the submitting side's folder that
    holds ``prunelab``) is appended to ``PYTHONPATH`` when it exists here, for a checkout that is not
    installed on the worker."""
    log = Path(task.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    path = write_task(task, log.with_suffix(".task.pkl"))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, int(task.cpus)))
    env["PYTHONUNBUFFERED"] = "1"
    if not task.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if source_root and os.path.isdir(os.path.join(source_root, "prunelab")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), source_root) if p)
    with open(log, "a") as f:
        kw = {"preexec_fn": _set_parent_death_signal} if sys.platform.startswith("linux") else {}
        return subprocess.call([sys.executable, "-m", "prunelab.experiments.tasks", str(path)],
                               stdout=f, stderr=subprocess.STDOUT, env=env, **kw)


def _absolute(task: Task) -> Task:
    """``task`` with absolute ``run_dir`` and ``log`` (a worker's current folder is not ours)."""
    return dataclasses.replace(task, run_dir=str(Path(task.run_dir).absolute()), log=str(Path(task.log).absolute()))


def _check_exit(task: Task, rc: int, extra: str = "") -> str:
    """The run directory for exit code 0; else raise RunDirBusyError (3) or TaskFailed."""
    if rc == 0:
        return task.run_dir
    if rc == BUSY_EXIT:
        from ..errors import RunDirBusyError

        raise RunDirBusyError(f"{task.run_dir} is being run by another process")
    raise TaskFailed(task.name, task.log, f"worker exited with code {rc}{extra}")


class _Handle:
    """What ``submit`` returns: the engine's reference (``ref``: a Ray ObjectRef or a submitit Job) and the
    task as submitted (``task``)."""

    __slots__ = ("ref", "task", "sent")

    def __init__(self, ref, task: Task, sent: Task):
        self.ref, self.task, self.sent = ref, task, sent

    def __repr__(self):
        return f"<{type(self).__name__} {self.task.study}/{self.task.name}>"


# ---------------------------------------------------------------------------------------------------
# Ray


def _ray_task(task: Task, source_root: str | None) -> int:  # the body of the remote function
    return run_task_process(task, source_root)


class RayExecutor:
    """Runs each sub-run as a Ray task (``num_cpus=cpus_per_task``, ``num_gpus=gpus_per_task``) that starts
    the worker process; on an existing cluster (``address``) or a local Ray instance it starts itself.
    See the module docstring for the options."""

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_task: int = 1,
                 gpus_per_task: float | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("ray is not installed: pip install 'prunelab[ray]'") from None
        import logging

        cpus_per_task = int(cpus_per_task or 1)
        if cpus_per_task < 1:
            raise ConfigError(f"ray executor: cpus_per_task must be >= 1, got {cpus_per_task}")
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"ray executor: workers must be >= 1, got {workers}")
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ncpu = int(workers) * cpus_per_task if workers else (os.cpu_count() or 1)
                ray.init(address="local", num_cpus=ncpu, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
            self._owned = True
        resources = ray.cluster_resources()
        if gpus_per_task is None:
            gpus_per_task = 1 if resources.get("GPU", 0) >= 1 else 0
        self.cpus_per_task, self.gpus_per_task = cpus_per_task, gpus_per_task
        self.slots = int(workers) if workers else max(1, int(resources.get("CPU", 1)) // cpus_per_task)
        self._remote = ray.remote(_ray_task).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                                                      name="prunelab-subrun")

    def submit(self, task: Task) -> _Handle:
        """Start ``task`` on the cluster (it queues while no CPUs/GPUs are free)."""
        sent = _absolute(dataclasses.replace(task, cpus=self.cpus_per_task, gpus=int(self.gpus_per_task > 0)))
        return _Handle(self._remote.remote(sent, _SOURCE_ROOT), task, sent)

    def wait(self, handles, timeout: float | None = None) -> list:
        """Block until at least one of ``handles`` finished (or ``timeout`` seconds passed); return the
        finished ones."""
        handles = list(handles)
        if not handles:
            return []
        by_ref = {h.ref: h for h in handles}
        ready, _ = self._ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        if ready:  # and every other one that is already done
            ready, _ = self._ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        return [by_ref[r] for r in ready]

    def result(self, handle: _Handle) -> str:
        """The run directory of a finished task; raises TaskFailed (log path in it) or RunDirBusyError."""
        try:
            rc = self._ray.get(handle.ref)
        except Exception as e:  # the Ray worker or its node died, the task was cancelled...
            raise TaskFailed(handle.task.name, handle.sent.log,
                             f"ray task failed: {type(e).__name__}: {_first_line(e)}") from e
        _check_exit(handle.sent, rc)
        return handle.task.run_dir

    def close(self):
        """Shut down the Ray instance if this executor started it (running tasks end with it)."""
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""


# ---------------------------------------------------------------------------------------------------
# Slurm (submitit)


class _SlurmJob:
    """The function a Slurm job runs: the worker process for one task. Checkpointable for submitit (it has
    ``checkpoint``): a job that reaches its time limit or is preempted is requeued, and the sub-run
    resumes from its run directory."""

    def __call__(self, task: Task, source_root: str | None = None) -> int:
        return run_task_process(task, source_root)

    def checkpoint(self, *args, **kwargs):
        """Resubmit the same task (it resumes where it stopped)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def read_slurm_options(path) -> dict:
    """The options in the YAML file ``path`` (keys: partition, time_min, cpus_per_task, gpus_per_task,
    mem_gb, slurm_additional_parameters and other ``slurm_*`` keys); unknown keys are a ConfigError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"slurm options_file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"slurm options_file {p} is not valid YAML: {_first_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"slurm options_file {p} must hold a mapping of options, got {type(data).__name__}")
    bad = [k for k in data if k not in SLURM_FILE_KEYS and not str(k).startswith("slurm_")]
    if bad:
        raise ConfigError(f"slurm options_file {p}: unknown key(s) {', '.join(map(str, bad))}; valid keys: "
                          f"{', '.join(SLURM_FILE_KEYS)} and other slurm_* submitit parameters")
    return data


class SlurmExecutor:
    """Runs each sub-run as one job of a Slurm cluster through submitit (or submitit's local/debug
    executors with ``cluster="local"``/``"debug"``). See the module docstring for the options;
    ``time_min`` (60), ``cpus_per_task`` (1) and ``gpus_per_task`` (0) take these defaults when neither
    the call nor ``options_file`` gives them."""

    def __init__(self, folder, workers: int | None = None, partition: str | None = None,
                 time_min: int | None = None, cpus_per_task: int | None = None, gpus_per_task: int | None = None,
                 mem_gb: float | None = None, options_file=None, cluster: str | None = None,
                 poll_s: float = 5.0, **extra):
        try:
            import submitit
        except ImportError:
            raise ConfigError("submitit is not installed: pip install 'prunelab[slurm]'") from None
        bad = [k for k in extra if not k.startswith("slurm_")]
        if bad:
            raise ConfigError(f"slurm executor: unknown option(s) {', '.join(bad)}; valid options: "
                              f"{', '.join(SLURM_OPTIONS)} and slurm_* submitit parameters")
        if folder is None:
            raise ConfigError("the slurm executor needs folder= (where submitit writes job scripts and logs, "
                              "on a file system the cluster's nodes share)")
        cluster = cluster or "slurm"
        if cluster not in ("slurm", "local", "debug"):
            raise ConfigError(f"slurm executor: cluster must be slurm, local or debug, got {cluster!r}")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("slurm executor: sbatch not found; run it on a Slurm login node (or pass "
                              "cluster='local' to run the jobs as processes on this machine)")

        opts = read_slurm_options(options_file) if options_file else {}
        given = {"partition": partition, "time_min": time_min, "cpus_per_task": cpus_per_task,
                 "gpus_per_task": gpus_per_task, "mem_gb": mem_gb}
        extra_add = extra.pop("slurm_additional_parameters", None)
        file_add = opts.pop("slurm_additional_parameters", None)
        opts.update({k: v for k, v in given.items() if v is not None})
        opts.update(extra)
        additional = {**(file_add or {}), **(extra_add or {})}

        self.cpus_per_task = _positive_int(opts.pop("cpus_per_task", 1), "cpus_per_task")
        self.gpus_per_task = _positive_int(opts.pop("gpus_per_task", 0), "gpus_per_task", minimum=0)
        self.time_min = _positive_int(opts.pop("time_min", 60), "time_min")
        self.cluster, self.poll_s = cluster, float(poll_s)
        params = {"timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task,
                  "gpus_per_node": self.gpus_per_task, "tasks_per_node": 1, "nodes": 1}
        mem = opts.pop("mem_gb", None)
        if mem is not None:
            params["mem_gb"] = float(mem)
        part = opts.pop("partition", None)
        if part:
            params["slurm_partition"] = str(part)
        if additional:
            params["slurm_additional_parameters"] = additional
        params.update(opts)  # the remaining slurm_* keys

        self.folder = Path(folder)
        self._ex = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        try:
            self._ex.update_parameters(**params)
        except (NameError, AssertionError, ValueError) as e:
            raise ConfigError(f"slurm executor: {e}") from None
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"slurm executor: workers must be >= 1, got {workers}")
        default = {"debug": 1, "local": max(1, (os.cpu_count() or 1) // self.cpus_per_task)}.get(cluster,
                                                                                                 SLURM_DEFAULT_SLOTS)
        self.slots = int(workers) if workers else default
        self._handles: list[_Handle] = []

    def submit(self, task: Task) -> _Handle:
        """Submit ``task`` as one job (named ``<study>-<name>``); a job that Slurm refuses (unknown
        partition or account, over a limit) raises :class:`~prunelab.errors.PrunelabError` with sbatch's
        message."""
        sent = _absolute(dataclasses.replace(task, cpus=self.cpus_per_task, gpus=self.gpus_per_task))
        self._ex.update_parameters(name=f"{task.study}-{task.name}"[:100])
        try:
            job = self._ex.submit(_SlurmJob(), sent, _SOURCE_ROOT)
        except Exception as e:  # sbatch refused the job (bad partition, account, limits...): stop the study
            from ..errors import PrunelabError

            why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())[:500]
            raise PrunelabError(f"slurm refused the job of sub-run {task.study}/{task.name}: {why or type(e).__name__}"
                                ) from e
        handle = _Handle(job, task, sent)
        self._handles.append(handle)
        return handle

    def wait(self, handles, timeout: float | None = None) -> list:
        """Poll the jobs every ``poll_s`` seconds until at least one of ``handles`` finished or ``timeout``
        seconds passed; return the finished ones."""
        handles = list(handles)
        deadline = None if timeout is None else time.monotonic() + timeout
        while handles:
            done = [h for h in handles if h.ref.done()]
            if done:
                return done
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(self.poll_s if left is None else min(self.poll_s, left))
        return []

    def result(self, handle: _Handle) -> str:
        """The run directory of a finished job; raises TaskFailed (with the task's log and the job's stderr
        file) or RunDirBusyError."""
        job = handle.ref
        where = f"; job {job.job_id} stderr: {job.paths.stderr}"
        try:
            rc = job.result()
        except Exception as e:  # the job died (time limit without requeue, out of memory, cancelled...)
            raise TaskFailed(handle.task.name, handle.sent.log,
                             f"slurm job failed: {type(e).__name__}: {_first_line(e)}{where}") from e
        _check_exit(handle.sent, rc, where)
        return handle.task.run_dir

    def close(self):
        """Cancel the jobs still running with ``cluster="local"`` (processes of this machine); Slurm jobs
        are left to finish (each writes its own run directory; a rerun picks the results up)."""
        if self.cluster == "local":
            for h in self._handles:
                try:
                    if not h.ref.done():
                        h.ref.cancel(check=False)
                except Exception:
                    pass
        self._handles = []


def _positive_int(value, name: str, minimum: int = 1) -> int:
    try:
        v = int(value)
        if v != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"slurm executor: {name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ConfigError(f"slurm executor: {name} must be >= {minimum}, got {v}")
    return v


# ---------------------------------------------------------------------------------------------------


def make(name: str, workers: int | None = None, **options):
    """The executor ``name`` ("ray" or "slurm") with ``workers`` slots and the engine ``options`` (see the
    module docstring); an unknown option key or a missing engine package is a ConfigError."""
    if name == "ray":
        valid, cls = RAY_OPTIONS, RayExecutor
        bad = [k for k in options if k not in valid]
    elif name == "slurm":
        valid, cls = SLURM_OPTIONS, SlurmExecutor
        bad = [k for k in options if k not in valid and not k.startswith("slurm_")]
    else:
        raise ConfigError(f"unknown executor engine {name!r}: use ray or slurm")
    if bad:
        more = " and slurm_* submitit parameters" if name == "slurm" else ""
        raise ConfigError(f"{name} executor: unknown option(s) {', '.join(sorted(bad))}; valid options: "
                          f"{', '.join(valid)}{more}")
    if name == "slurm" and "folder" not in options:
        raise ConfigError("the slurm executor needs folder= (where submitit writes job scripts and logs, "
                          "on a file system the cluster's nodes share)")
    return cls(workers=workers, **options)
