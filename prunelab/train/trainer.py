"""The one training loop every method plugs into.

A method never copies this loop: it passes :class:`Hook` objects that add loss terms, own parameter
groups (with their own optimiser and learning rate), per-step and per-epoch callbacks, and decide
which modules are in train mode. Everything else (devices, AMP, channels-last, DDP, schedules,
evaluation, checkpoints, exact resume, progress bars, logging) lives here once.

Exact resume: the loader's randomness is a function of (seed, epoch, step), the checkpoint holds the
model, optimisers, schedulers, grad scaler, hook states (by :attr:`~prunelab.hooks.Hook.state_key`),
RNG states and the running sums of the epoch in progress, and ``metrics.jsonl`` is cut back to the
checkpoint. A run killed at any point and resumed
ends with the same weights and metrics as an uninterrupted run (deterministic mode).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import OptimConfig, ScheduleConfig, TrainConfig
from ..errors import CheckpointError, ConfigError, TrainingDivergedError
from ..hooks import Batch, Hook, ParamGroup  # noqa: F401  (re-exported: methods and tests import them here)
from ..hooks import hook_state_keys
from .rundir import RunDir
from .schedules import lr_multiplier


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use --set train.device=cpu")
    return dev


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision)."""
    if mode == "off" or device.type != "cuda":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def split_decay(params_named, decay_norm_and_bias: bool):
    """(decayed, not decayed): BN and bias parameters (ndim <= 1) skip weight decay by default."""
    decay, no_decay = [], []
    for _, p in params_named:
        (decay if decay_norm_and_bias or p.ndim > 1 else no_decay).append(p)
    return decay, no_decay


def make_optimizer(name: str, groups: list[dict], *, lr: float, momentum=0.9, nesterov=False,
                   betas=(0.9, 0.999), weight_decay=0.0) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


class Trainer:
    """Train ``model`` on ``train_loader``, evaluating on ``eval_loaders`` every epoch.

    Args:
        model: the network (a plain module or a gated model).
        train_loader: a :class:`~prunelab.data.CifarLoader` (or anything with ``batches(start)``,
            ``set_epoch`` and ``__len__``).
        eval_loaders: ``{"test": loader, "val": loader}``; the first is the headline metric.
        train_cfg, optim_cfg, schedule_cfg: config sections.
        run: a :class:`RunDir` for metrics and checkpoints (``None``: nothing written).
        hooks: method hooks.
        device: training device.
    """

    def __init__(self, model: nn.Module, train_loader, eval_loaders: dict | None = None, *,
                 train_cfg: TrainConfig | None = None, optim_cfg: OptimConfig | None = None,
                 schedule_cfg: ScheduleConfig | None = None, run: RunDir | None = None, hooks=(),
                 device=None, rank: int = 0, world_size: int = 1, stage: str = ""):
        self.cfg = train_cfg or TrainConfig()
        self.optim_cfg = optim_cfg or OptimConfig()
        self.schedule_cfg = schedule_cfg or ScheduleConfig()
        self.device = torch.device(device) if device is not None else resolve_device(self.cfg.device)
        self.rank, self.world_size = rank, world_size
        self.stage = stage
        self.hooks = list(hooks)
        self.run = run
        self.train_loader = train_loader
        self.eval_loaders = eval_loaders or {}
        self.amp = amp_dtype(self.cfg.amp, self.device)
        self.memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.steps_per_epoch = len(train_loader)
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        self.history: list[dict] = []
        self.stopped_early: int | None = None  # the epoch after which a hook ended training, if one did
        self.last_eval: dict = {}  # evaluations of the epoch just finished (hooks read it in end_epoch)
        self._sums: dict[str, torch.Tensor] = {}
        self._nonfinite = None  # count of steps whose loss was NaN/inf since the last check (on the device)
        for h in self.hooks:
            h.setup(self)
        self._build_optimizers()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.net = self.model
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.cfg.compile:
            self.net = torch.compile(self.net)

    # -- optimisers --------------------------------------------------------------------------------
    def _build_optimizers(self):
        claimed, extra = set(), []
        for h in self.hooks:
            for g in h.param_groups(self):
                g.params = [p for p in g.params if p.requires_grad]
                if g.params:
                    extra.append(g)
                    claimed |= {id(p) for p in g.params}
        o, s = self.optim_cfg, self.schedule_cfg
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in claimed]
        self.optimizers, self.schedulers, self.group_names = [], [], []
        main = lr_multiplier(s.name, self.total_steps, self.steps_per_epoch, warmup=s.warmup,
                             warmup_start=s.warmup_start, milestones=s.milestones, step_size=s.step_size,
                             gamma=s.gamma, final_factor=s.final_factor)
        self._main_multiplier = main
        if named:
            decay, no_decay = split_decay(named, o.decay_norm_and_bias)
            groups = [{"params": decay, "weight_decay": o.weight_decay}]
            if no_decay:
                groups.append({"params": no_decay, "weight_decay": 0.0})
            opt = make_optimizer(o.name, groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, betas=o.betas)
            self._add_optimizer("weights", opt, main)
        for g in extra:
            opt = make_optimizer(g.optimizer, [{"params": g.params}], lr=g.lr, momentum=g.momentum,
                                 nesterov=g.nesterov, betas=g.betas, weight_decay=g.weight_decay)
            if g.schedule == "main":
                f = main
            elif g.schedule == "cosine":
                f = lr_multiplier("cosine", self.total_steps, self.steps_per_epoch)
            elif g.schedule == "constant":
                f = lr_multiplier("constant", self.total_steps, self.steps_per_epoch)
            else:
                raise ValueError(f"unknown param-group schedule {g.schedule!r}")
            self._add_optimizer(g.name, opt, f)
        if not self.optimizers:
            raise ValueError("nothing to train: every parameter is frozen and no hook adds a parameter group")

    def _add_optimizer(self, name, opt, mult):
        self.optimizers.append(opt)
        self.schedulers.append(torch.optim.lr_scheduler.LambdaLR(opt, mult))
        self.group_names.append(name)

    def lr(self, i: int = 0) -> float:
        return self.optimizers[i].param_groups[0]["lr"]

    # -- train -------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _set_mode(self, training: bool):
        if self.hooks:
            for h in self.hooks:
                h.set_mode(self, training)
        else:
            self.model.train(training)

    def _accumulate(self, key: str, value: torch.Tensor):
        v = value.detach().float()
        if key in self._sums:
            self._sums[key] += v
        else:
            self._sums[key] = v.clone()

    def train_step(self, x, y, idx) -> Batch:
        batch = Batch(x, y, idx)
        for h in self.hooks:
            h.before_forward(self, batch)
        with self._autocast():
            logits = self.net(x)
            batch.logits = logits
            batch.ce_per_sample = F.cross_entropy(logits.float(), y, reduction="none",
                                                  label_smoothing=self.cfg.label_smoothing)
            terms = {"ce": batch.ce_per_sample.mean()}
            for h in self.hooks:
                terms.update(h.loss_terms(self, batch))
            loss = sum(terms.values())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            # each optimiser's parameters are clipped on their own: a huge gate gradient (e.g. BAR's
            # capped barrier) must not scale the weights' gradients down to nothing
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.cfg.grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        for sch in self.schedulers:
            sch.step()
        for h in self.hooks:
            h.after_step(self, batch)
        bad = (~torch.isfinite(loss.detach())).int()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad
        n = torch.tensor(float(len(y)), device=self.device)
        self._accumulate("n", n)
        self._accumulate("loss", loss.detach() * n)
        self._accumulate("correct", (logits.detach().argmax(1) == y).sum())
        for k, v in terms.items():
            self._accumulate(f"term_{k}", v.detach() * n)
        return batch

    def check_finite(self) -> None:
        """Stop with one line if a loss since the last check was NaN or infinite (before anything of
        this state is saved, so the run directory keeps its last good checkpoint)."""
        if self._nonfinite is None or not int(self._nonfinite.item()):
            return
        hints = [f"optim.lr={self.optim_cfg.lr:g}"]
        for h in self.hooks:
            hint = getattr(h, "divergence_hint", None)
            if callable(hint) and hint():
                hints.append(hint())
        where = f"{self.stage + ' ' if self.stage else ''}epoch {self.epoch + 1}, step {self.global_step}"
        raise TrainingDivergedError(
            f"the training loss became NaN or infinite ({where}); the likely cause is a step too large for this "
            f"model: lower {' or '.join(hints)}. The run directory keeps its last good checkpoint: start over with "
            f"--force and the new setting (--resume would repeat the same steps)")

    def evaluate(self, loader, collect=None) -> dict:
        """Accuracy and mean loss on ``loader`` (eval mode, no label smoothing); see :func:`evaluate`."""
        self._set_mode(False)
        return evaluate(self.net, loader, amp=self.amp, collect=collect, world_size=self.world_size, set_mode=False)

    def fit(self, resume: bool = False) -> dict:
        """Train for ``train.epochs`` epochs (continuing from the checkpoint when ``resume``)."""
        cfg = self.cfg
        if resume and self.run is not None and self.run.file(self._ckpt_name).exists():
            self.load_state()
        elif self.run is not None and 0 in cfg.keep_epochs and self.epoch == 0 and self.step_in_epoch == 0:
            self._save_snapshot(0)
        from tqdm.auto import tqdm

        kill_at = int(os.environ.get("PRUNELAB_TEST_SIGKILL_AT_STEP", "0"))  # test hook: die like `kill -9`
        show = cfg.progress and self.rank == 0
        bar = tqdm(total=self.total_steps, initial=self.global_step, disable=None if show else True,
                   desc=self.stage or "train", dynamic_ncols=True, leave=False)
        t_epoch = time.time()
        stop = any(h.should_stop(self) for h in self.hooks) and self.step_in_epoch == 0  # a resumed early stop
        while self.epoch < cfg.epochs and not stop:
            self.train_loader.set_epoch(self.epoch)
            self._set_mode(True)
            for x, y, idx in self.train_loader.batches(self.step_in_epoch):
                self.train_step(x, y, idx)
                self.step_in_epoch += 1
                self.global_step += 1
                bar.update(1)
                if self.global_step % 20 == 0 or self.device.type == "cpu":  # a device sync: not every step on GPU
                    self.check_finite()
                if show and self.global_step % 25 == 0:
                    s = self._sums
                    bar.set_postfix(loss=f"{(s['loss'] / s['n']).item():.3f}",
                                    acc=f"{(s['correct'] / s['n']).item():.3f}", epoch=self.epoch)
                if (cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0
                        and self.step_in_epoch < self.steps_per_epoch):
                    self.check_finite()
                    self.save_state()
                if kill_at and self.global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    stop = True
                    break
            if stop and self.step_in_epoch < self.steps_per_epoch:
                break
            record = self._end_epoch(time.time() - t_epoch)
            if show:
                tqdm.write(self._summary(record))
            t_epoch = time.time()
            if self.epoch < cfg.epochs and any(h.should_stop(self) for h in self.hooks):
                self.stopped_early = self.epoch
                stop = True
        bar.close()
        return self.history[-1] if self.history else {}

    def _end_epoch(self, seconds: float) -> dict:
        self.check_finite()
        s = {k: v.item() for k, v in self._sums.items()}
        n = max(s.get("n", 0.0), 1.0)
        record = {"stage": self.stage, "epoch": self.epoch + 1, "step": self.global_step,
                  "lr": self.lr(0), "train_loss": s.get("loss", 0.0) / n, "train_acc": s.get("correct", 0.0) / n}
        record.update({k[5:]: v / n for k, v in s.items() if k.startswith("term_")})
        self.last_eval = {}
        if (self.epoch + 1) % self.cfg.eval_every == 0 or self.epoch + 1 == self.cfg.epochs:
            watchers = [h for h in self.hooks if h.wants_eval_batches]
            for name, loader in self.eval_loaders.items():
                collect = None
                if watchers:
                    def collect(b, name=name):
                        for h in watchers:
                            h.eval_batch(self, name, b)
                r = self.evaluate(loader, collect=collect)
                self.last_eval[name] = r
                record[f"{name}_acc"], record[f"{name}_loss"] = r["acc"], r["loss"]
        for h in self.hooks:
            record.update(h.end_epoch(self, self.epoch))
        record["epoch_time_s"] = seconds
        record["images_per_s"] = n * self.world_size / max(seconds, 1e-9)
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self._sums = {}
        if self.run is not None:
            self.run.log(record)
            self._tensorboard(record)
            self.save_state()
            if self.epoch in self.cfg.keep_epochs:
                self._save_snapshot(self.epoch)
        return record

    def _tensorboard(self, record: dict) -> None:
        """Mirror the epoch record to TensorBoard when ``train.tensorboard`` is set (optional extra)."""
        if not self.cfg.tensorboard or self.rank != 0:
            return
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run.file("tensorboard")))
            except ImportError:
                import warnings

                warnings.warn("train.tensorboard is set but tensorboard is not installed; "
                              "pip install 'prunelab[tensorboard]'", stacklevel=2)
                self._tb = None
        if self._tb is not None:
            prefix = f"{self.stage}/" if self.stage else ""
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(prefix + k, v, record["step"])
            self._tb.flush()

    def _summary(self, r: dict) -> str:
        parts = [f"{self.stage + ' ' if self.stage else ''}epoch {r['epoch']}/{self.cfg.epochs}",
                 f"loss {r['train_loss']:.3f}", f"train {100 * r['train_acc']:.1f}%"]
        parts += [f"{k[:-4]} {100 * v:.2f}%" for k, v in r.items() if k.endswith("_acc") and k != "train_acc"]
        parts.append(f"{r['images_per_s']:.0f} img/s")
        return " | ".join(parts)

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def _ckpt_name(self) -> str:
        return f"checkpoint{'-' + self.stage if self.stage else ''}.pt"

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
               "python_version": random.getstate()[0]}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": "prunelab-trainer-1",
            "model_name": getattr(self.model, "prunelab_name", type(self.model).__name__),
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict(),
            "hooks": {k: h.state_dict() for k, h in zip(hook_state_keys(self.hooks), self.hooks)},
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "history": self.history,
            "metrics_size": self.run.metrics_size() if self.run is not None else 0,
            "rng": rng,
        }

    def save_state(self) -> None:
        if self.run is not None:
            self.run.save(self._ckpt_name, self.state_dict())

    def load_state(self) -> None:
        state = self.run.load(self._ckpt_name, map_location=self.device)
        name = getattr(self.model, "prunelab_name", type(self.model).__name__)
        if state.get("model_name") != name:
            raise CheckpointError(f"{self.run.file(self._ckpt_name)} was written for model "
                                  f"{state.get('model_name')!r}, not {name!r}; use --force or another --out")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{self.run.file(self._ckpt_name)} does not fit this model "
                                  f"({str(e).splitlines()[0][:160]}); use --force or another --out") from None
        hook_states = self._match_hook_states(state["hooks"])  # before the optimisers: names what changed
        if len(state["optimizers"]) != len(self.optimizers):
            raise CheckpointError(f"{self.run.file(self._ckpt_name)} has {len(state['optimizers'])} optimisers, "
                                  f"this run builds {len(self.optimizers)}: the method config changed")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        self.scaler.load_state_dict(state["scaler"])
        for h, s in hook_states:
            h.load_state_dict(s)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self._sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.history = list(state["history"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate((rng["python_version"], tuple(rng["python"]), None))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"]])
        self.run.truncate_metrics(state["metrics_size"])

    def _match_hook_states(self, saved) -> list[tuple[Hook, dict]]:
        """Pair each hook with its state in the checkpoint, by :attr:`Hook.state_key`.

        A list is a checkpoint written before hooks had keys: matched by position when it has one
        state per hook. Any other difference between the checkpoint's hooks and this run's is
        refused: restoring by position would hand a hook another hook's state without a word.
        """
        keys = hook_state_keys(self.hooks)
        fix = ("resume with the same method and hooks as the run that wrote the checkpoint, "
               "or start a new run with --force")
        if isinstance(saved, (list, tuple)):
            if len(saved) != len(keys):
                raise ConfigError(f"{self.run.file(self._ckpt_name)} holds the state of {len(saved)} hook(s) by "
                                  f"position (an older checkpoint), but this run has {len(keys)} "
                                  f"({', '.join(keys) or 'none'}); {fix}")
            saved = dict(zip(keys, saved))
        only_saved = sorted(set(saved) - set(keys))
        only_here = sorted(set(keys) - set(saved))
        if only_saved or only_here:
            diff = [f"only in the checkpoint: {', '.join(only_saved)}" if only_saved else "",
                    f"only in this run: {', '.join(only_here)}" if only_here else ""]
            raise ConfigError(f"{self.run.file(self._ckpt_name)} was written with other hooks than this run has "
                              f"({'; '.join(d for d in diff if d)}); {fix}")
        return [(h, saved[k]) for h, k in zip(self.hooks, keys)]

    def _save_snapshot(self, epoch: int) -> None:
        self.run.save(f"epoch_{epoch}.pt", weights_payload(self.model, {"epoch": epoch}))


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, amp=None, collect=None, world_size: int = 1, set_mode: bool = True) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on ``loader``.

    ``collect(batch)`` is called on each evaluated :class:`Batch` (per-instance analyses). With
    ``set_mode`` the model is put in eval mode (and restored afterwards).
    """
    was = model.training
    if set_mode:
        model.eval()
    p = next(model.parameters())
    correct = torch.zeros((), device=p.device)
    loss = torch.zeros((), device=p.device)
    n = torch.zeros((), device=p.device)
    ctx = torch.autocast(p.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    for x, y, idx in loader:
        with ctx:
            logits = model(x)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        correct += (logits.argmax(1) == y).sum()
        loss += ce.sum()
        n += len(y)
        if collect is not None:
            collect(Batch(x, y, idx, logits, ce))
    if world_size > 1:
        import torch.distributed as dist

        for t in (correct, loss, n):
            dist.all_reduce(t)
    if set_mode:
        model.train(was)
    n_ = max(n.item(), 1.0)
    return {"acc": correct.item() / n_, "loss": loss.item() / n_, "n": int(n_)}


def weights_payload(model: nn.Module, meta: dict | None = None) -> dict:
    """What ``model.pt`` holds: the state dict plus how to rebuild the module."""
    return {"format": "prunelab-weights-1", "model_name": getattr(model, "prunelab_name", None),
            "model_kwargs": dict(getattr(model, "prunelab_kwargs", {})), "state_dict": model.state_dict(),
            "meta": dict(meta or {})}


def load_weights(model: nn.Module, path, strict: bool = True, fix: str = "point train.init_from at a {name} "
                 "checkpoint") -> dict:
    """Load ``model.pt``/``epoch_K.pt``/``checkpoint.pt`` weights (or a run dir's ``model.pt``) into ``model``.

    Refuses, with one line naming the mismatch, weights written for another model or arguments; ``fix``
    (formatted with ``name``) is the advice for weights of another model, which depends on who gave the path.
    """
    from pathlib import Path

    from .rundir import load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    payload = load_checkpoint(path)
    name = getattr(model, "prunelab_name", None)
    kwargs = dict(getattr(model, "prunelab_kwargs", {}))
    if isinstance(payload, dict) and "state_dict" in payload:
        if name and payload.get("model_name") and payload["model_name"] != name:
            raise CheckpointError(f"{path} holds weights of model {payload['model_name']!r}, but this run builds "
                                  f"{name!r}; {fix.format(name=name)}")
        if name and payload.get("model_kwargs") is not None and payload["model_kwargs"] != kwargs:
            raise CheckpointError(f"{path} holds {name} weights built with {payload['model_kwargs']}, but this run "
                                  f"uses {kwargs}; use matching model.kwargs")
        state = payload["state_dict"]
    elif isinstance(payload, dict) and "model" in payload:  # a trainer checkpoint
        if name and payload.get("model_name") not in (None, name):
            raise CheckpointError(f"{path} is a checkpoint of model {payload['model_name']!r}, not {name!r}")
        state = payload["model"]
    else:
        raise CheckpointError(f"{path} is not a prunelab weights file")
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit model {name!r} ({str(e).splitlines()[0][:160]})") from None
    return payload if isinstance(payload, dict) else {}


def weights_fingerprint(path) -> str:
    """sha256 over the parameter and buffer values of a ``model.pt`` (names sorted, bytes as stored).

    Two trainings of one config on one machine give the same fingerprint when training is
    deterministic; a study uses it to tell whether results made with an earlier copy of a run (its
    teacher, say) were made with these very weights.
    """
    import hashlib
    from pathlib import Path

    from .rundir import load_checkpoint

    path = Path(path)
    payload = load_checkpoint(path / "model.pt" if path.is_dir() else path)
    if not isinstance(payload, dict) or not ("state_dict" in payload or "model" in payload):
        raise CheckpointError(f"{path} is not a prunelab weights file")
    state = payload.get("state_dict", payload.get("model"))
    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name]
        if torch.is_tensor(v):
            h.update(name.encode() + b"\0" + str(v.dtype).encode() + str(tuple(v.shape)).encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
