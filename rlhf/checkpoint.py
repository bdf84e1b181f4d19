"""Resumable checkpoints: ``<stage dir>/checkpoints/last.ckpt`` while a stage trains.

When: every ``stage.save_every_n_steps`` optimizer steps (PPO: iterations), after
``stage.save_every_minutes`` of wall time, at every epoch end, and at the step boundary after a
SIGTERM or SIGUSR2 (SLURM's preemption and time-limit signals), before the signal is handed on
(to submitit, which requeues the job; without a handler the process exits 128 + signal).
What: Lightning's checkpoint (weights, optimizers, schedulers, loop counters, the training
loader's position, :class:`ResumableLoader`), the RNG states and the last metrics, so a resumed
stage ends with the same weights as an uninterrupted one (tested bit-exact on CPU).
How: written beside the old one on the same filesystem (:class:`DirectCheckpointIO`) and renamed
over it, so ``last.ckpt`` is always complete; a failed write (a full disk) leaves the previous one.
Weights that are not finite are never saved: the stage stops naming the first bad tensor.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.plugins.io import TorchCheckpointIO
import numpy as np
import torch
from torch.utils.data import DataLoader

from rlhf.handoff import partial_path, publish, remove
from rlhf.models.reward import NonFiniteError  # one error for NaN or inf, from weights, metrics or scores

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class CheckpointError(RuntimeError):
    """``last.ckpt`` could not be written or read."""


def last_checkpoint(sdir: Path) -> Path | None:
    """``checkpoints/last.ckpt``, or the previous one a kill left mid-replacement (sharded checkpoints
    are folders, replaced in two renames)."""
    for name in ("last.ckpt", ".last.ckpt.old"):
        path = sdir / "checkpoints" / name
        if path.exists():
            return path
    return None


def check_readable(path: Path) -> int | None:
    """The global step of the checkpoint at ``path``; fails now, naming the file, if it is not a
    complete checkpoint (a truncated file has no zip directory; reading it is cheap with ``mmap``).
    Folders (sharded checkpoints) load as they are: None."""
    if path.is_dir():
        return None
    try:
        step = torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"]
    except Exception as e:  # noqa: BLE001 -- any reader error means the same thing here
        raise CheckpointError(f"{path} is not a complete checkpoint ({type(e).__name__}: {str(e)[:200]}). Delete it "
                              "to train this stage from its start, or rerun with resume=false") from None
    return int(step)


def first_nonfinite(module: torch.nn.Module) -> str | None:
    """``"<parameter name> (nan|inf)"`` of the first parameter holding a NaN or inf, else None
    (sharded parameters: this rank's shard)."""
    for name, p in module.named_parameters():
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.numel() and not bool(torch.isfinite(t).all()):
            return f"{name} ({'nan' if bool(torch.isnan(t).any()) else 'inf'})"
    return None


def check_finite(trainer: pl.Trainer, stage: str) -> None:
    """Raise :class:`NonFiniteError` on every rank if any rank's weights are not finite."""
    bad = first_nonfinite(trainer.lightning_module)
    if trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
        raise NonFiniteError(f"stage {stage} diverged: {bad or 'a parameter on another rank'} is not finite "
                             f"after step {trainer.global_step}. Nothing was exported and last.ckpt keeps the "
                             "last finite weights; lower stage.optim.lr (or check the data) and rerun with resume=false")


def rng_states() -> dict:
    """torch (CPU, CUDA), Python and NumPy generator states, in types ``torch.load`` reads safely."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _epoch_ends(trainer: pl.Trainer) -> bool:
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight to the path it is given (``ResumeCheckpoint``'s file beside
    ``last.ckpt``), fsynced. Lightning's default holds the whole checkpoint in memory and writes
    it into the temp directory first, which a small ``/tmp`` cannot hold."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


class ResumableLoader(DataLoader):
    """A shuffling DataLoader whose position Lightning keeps in ``last.ckpt`` (it saves and loads
    ``state_dict`` of loaders that have one): the generator's state when the epoch began and the
    batches taken since. A resumed run draws the same permutation, skips the batches already
    trained on, and continues exactly as the uninterrupted run, epoch after epoch.
    Lightning fetches ahead only from unsized loaders, so batches taken = batches trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch_start, self._taken, self._skip = None, 0, 0

    def __iter__(self):
        if self.generator is not None:  # before the epoch draws its seed and permutation from it
            self._epoch_start = self.generator.get_state()
        skip, self._skip, self._taken = self._skip, 0, 0
        for batch in super().__iter__():
            self._taken += 1
            if self._taken > skip:
                yield batch

    def state_dict(self, epoch_end: bool = False) -> dict:
        """``epoch_end``: the epoch is over though batches are left (``limit_train_batches``)."""
        if epoch_end or self._taken >= len(self):  # the next epoch starts from the generator as it is now
            return {"generator": self.generator.get_state() if self.generator is not None else None, "taken": 0}
        return {"generator": self._epoch_start, "taken": self._taken}

    def load_state_dict(self, state: dict) -> None:
        if state.get("generator") is not None and self.generator is not None:
            self.generator.set_state(state["generator"])
        self._skip = state["taken"]


class ResumeCheckpoint(pl.Callback):
    """Keeps ``<sdir>/checkpoints/last.ckpt`` current (see the module docstring for when).

    A batch's checkpoint is taken only at an optimizer step (accumulated gradients are not kept)
    and not at an epoch's last batch: that epoch's validation and exports come first, so the
    epoch-end checkpoint is the one a resume continues from.
    """

    def __init__(self, sdir: Path, stage: str, every_n_steps: int | None = None, every_minutes: float | None = None):
        self.path, self.stage = Path(sdir) / "checkpoints" / "last.ckpt", stage
        self.every_n, self.every_s = every_n_steps, every_minutes * 60 if every_minutes else None
        self.metrics: dict[str, float] = {}  # restored: a run resumed at its end still reports them
        self._pending: int | None = None
        self._previous: dict = {}
        self._rng, self._loader_state = None, None
        self._saved_step, self._saved_at = -1, time.monotonic()

    # -- triggers ------------------------------------------------------------------------
    def setup(self, trainer, module, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():  # Python's rule for signal handlers
            for s in SIGNALS:  # from setup on: a signal while models load or restore is kept too
                self._previous[s] = signal.signal(s, self._on_signal)

    def on_train_start(self, trainer, module) -> None:
        # Lightning hands a loader its saved position only if nothing built the loaders before the
        # restore (estimated_stepping_batches, for the LR schedule, does), and does not know an
        # epoch cut short by limit_train_batches is over: the position is kept and set here
        if self._loader_state and isinstance(trainer.train_dataloader, ResumableLoader):
            trainer.train_dataloader.load_state_dict(self._loader_state)
        self._saved_at = time.monotonic()
        if trainer.global_step:
            self._saved_step = trainer.global_step  # the checkpoint it resumed from
        if threading.current_thread() is threading.main_thread():
            # Lightning put its own SIGTERM handler over ours after setup: it would stop the run after
            # an epoch's last batch and validation, before on_train_epoch_end saves that epoch
            for s in SIGNALS:
                signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log.warning("stage %s received %s: saving last.ckpt at the next step boundary", self.stage,
                    signal.Signals(signum).name)
        self._pending = signum

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer)  # here, not at the batch's end: the last step's metrics are logged by now
        if self._rng is not None:  # where the checkpointed run went on: the same dropout masks follow
            set_rng_states(self._rng)
            self._rng = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if _epoch_ends(trainer) or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        step = trainer.global_step
        due = (self._pending is not None or bool(self.every_n and step % self.every_n == 0)
               or 0 < trainer.max_steps <= step  # the last step: a checkpoint a longer run can go on from
               or bool(self.every_s and time.monotonic() - self._saved_at >= self.every_s))
        if trainer.world_size > 1:  # a collective save: every rank saves when any rank is due
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
        if due:
            self.save(trainer)

    def on_validation_start(self, trainer, module) -> None:
        if not trainer.sanity_checking and not _epoch_ends(trainer):
            self._stop_if_signalled(trainer)  # not after a whole validation pass

    def on_train_epoch_end(self, trainer, module) -> None:
        self.save(trainer, epoch_end=_epoch_ends(trainer))  # not when max_steps cut it short: saved above
        self._stop_if_signalled(trainer)

    def teardown(self, trainer, module, stage: str) -> None:
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        self._hand_on(previous)  # a signal after the last epoch end: the end is saved already

    def _stop_if_signalled(self, trainer) -> None:
        pending = self._pending is not None
        if trainer.world_size > 1:  # every rank stops when any rank was signalled
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
            self._pending = self._pending or (signal.SIGTERM if pending else None)
        if pending:
            self.save(trainer)  # nothing to do when the step is saved already
            self._hand_on(self._previous)

    def _hand_on(self, handlers: dict) -> None:
        """After the save: SIGUSR2 to submitit (it requeues the job and exits); else exit 128 + signal.
        Lightning's own SIGTERM handler is not called: it broadcasts, which hangs when ranks disagree."""
        signum, self._pending = self._pending, None
        if signum is None:
            return
        previous = handlers.get(signum, signal.SIG_DFL)
        if previous is signal.SIG_IGN:
            return
        log.warning("stage %s: last.ckpt saved at step %d; stopping for %s (rerun the same command to resume)",
                    self.stage, self._saved_step, signal.Signals(signum).name)
        if signum == signal.SIGUSR2 and callable(previous):
            previous(signum, None)
        raise SystemExit(128 + signum)

    # -- saving ----------------------------------------------------------------------------
    def save(self, trainer: pl.Trainer, epoch_end: bool = False) -> None:
        """``epoch_end``: saved even at a step saved before (the checkpoint then resumes after the
        epoch's validation and exports, not before them)."""
        if (trainer.global_step == self._saved_step and not epoch_end) or trainer.sanity_checking:
            return
        check_finite(trainer, self.stage)  # a diverged step never replaces the last good checkpoint
        tmp = partial_path(self.path)
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove(tmp)
        trainer.strategy.barrier()
        try:
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                self._replace(tmp)
        except OSError as e:
            if trainer.is_global_zero:
                remove(tmp)
            kept = f"the previous one (step {self._saved_step}) is kept" if self.path.exists() else "there was none before"
            raise CheckpointError(f"could not write {self.path}: {e}. {kept}; free space and rerun the same "
                                  "command to resume") from e
        trainer.strategy.barrier()
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()

    def _replace(self, tmp: Path) -> None:
        if tmp.is_file():
            _fsync(tmp)
            os.replace(tmp, self.path)
        else:  # a sharded checkpoint is a folder: two renames (last_checkpoint finds the old one between)
            publish(tmp, self.path)
        _fsync(self.path.parent)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()
        if isinstance(trainer.train_dataloader, ResumableLoader):
            epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            checkpoint["loader"] = trainer.train_dataloader.state_dict(epoch_end=epoch_end)
        checkpoint["rlhf_metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        self._rng = checkpoint.get("rng_states")
        self._loader_state = checkpoint.get("loader")
        self.metrics = checkpoint.get("rlhf_metrics", {})

