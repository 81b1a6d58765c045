"""Horovod's Keras callbacks (``hvd.callbacks``) on shoal."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from shoal.horovod._world import global_process_set, size
from shoal.horovod.tensorflow import _ops
from shoal.horovod.tensorflow._keras import keras, optimizer_variables


def _variables(model) -> list:
    opt = getattr(model, "optimizer", None)
    extra = optimizer_variables(opt) if opt is not None and getattr(opt, "built", True) else []
    return list(model.variables) + extra


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Start every rank from rank ``root_rank``'s weights and optimizer state.

    The model's variables are broadcast when training begins and, with the
    optimizer's state (created by the first step), again after the first
    batch, as Horovod does. ``local_variables`` (variables, e.g. those of
    layers each rank trains on its own) keep every rank's own values.
    """

    def __init__(self, root_rank=0, device="", local_variables=None,
                 process_set=global_process_set):
        super().__init__()
        self.root_rank, self.process_set = root_rank, process_set
        # ids: Keras 3's variables have no ref(); a model hands out the same objects
        self.local = {id(v) for v in (local_variables or [])}
        self.broadcast_done = False

    def _broadcast(self, variables):
        shared = [v for v in variables if id(v) not in self.local]
        _ops.broadcast_variables(shared, self.root_rank, self.process_set)

    def on_train_begin(self, logs=None):
        if self.model.built:
            self._broadcast(self.model.variables)

    def on_batch_end(self, batch, logs=None):
        if self.broadcast_done:
            return
        self._broadcast(_variables(self.model))
        self.broadcast_done = True


class MetricAverageCallback(keras.callbacks.Callback):
    """Average the epoch's metrics (``logs``) over the ranks at the end of each epoch.

    Put it before callbacks that read the metrics (checkpoints, early stopping,
    schedules on plateau) so that they act on the same numbers on every rank.
    """

    def __init__(self, device="", process_set=global_process_set):
        super().__init__()
        self.process_set = process_set

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        names = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        if not names:
            return
        values = tf.constant([float(logs[k]) for k in names], tf.float64)
        avg = _ops.allreduce(values, op=_ops.Average, name=f"metrics.{epoch}",
                             process_set=self.process_set).numpy()
        for k, v in zip(names, avg):
            logs[k] = float(v)


def _set_lr(optimizer, lr: float) -> None:
    lr_var = optimizer.learning_rate
    if hasattr(lr_var, "assign"):
        lr_var.assign(lr)
    else:
        optimizer.learning_rate = lr


class LearningRateScheduleCallback(keras.callbacks.Callback):
    """Set the learning rate to ``initial_lr * multiplier(epoch)`` between ``start_epoch``
    and ``end_epoch`` (Horovod's).

    ``multiplier`` is a constant or a function of the epoch; with
    ``staircase=False`` the epoch is fractional (it advances every batch, which
    needs ``steps_per_epoch``, taken from ``fit`` when not given).
    ``momentum_correction`` scales an SGD momentum by the ratio of the new to
    the old learning rate for the batch where the rate changes, as Horovod does.
    """

    def __init__(self, initial_lr, multiplier, start_epoch=0, end_epoch=None, staircase=True,
                 momentum_correction=True, steps_per_epoch=None, verbose=0):
        super().__init__()
        self.initial_lr = initial_lr
        self.multiplier = multiplier if callable(multiplier) else (lambda epoch: multiplier)
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.staircase, self.momentum_correction = staircase, momentum_correction
        self.steps_per_epoch, self.verbose = steps_per_epoch, verbose
        self.current_epoch = 0
        self._restore_momentum = None

    def _in_range(self, epoch) -> bool:
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def _adjust(self, epoch) -> None:
        opt = self.model.optimizer
        old = float(np.asarray(opt.learning_rate))
        new = float(self.initial_lr * self.multiplier(epoch))
        _set_lr(opt, new)
        momentum = getattr(opt, "momentum", None)
        if self.momentum_correction and momentum and old > 0 and new != old:
            m = float(np.asarray(momentum))
            self._restore_momentum = m
            self._set_momentum(opt, m * new / old)

    @staticmethod
    def _set_momentum(opt, value):
        if hasattr(opt.momentum, "assign"):
            opt.momentum.assign(value)
        else:
            opt.momentum = value

    def on_train_begin(self, logs=None):
        if self.initial_lr is None:
            self.initial_lr = float(np.asarray(self.model.optimizer.learning_rate))
        if not self.staircase and not self.steps_per_epoch:
            self.steps_per_epoch = (self.params or {}).get("steps")
            if not self.steps_per_epoch:
                raise ValueError("staircase=False needs steps_per_epoch (fit did not report "
                                 "the number of steps)")

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch
        if self.staircase and self._in_range(epoch):
            self._adjust(epoch)

    def on_batch_begin(self, batch, logs=None):
        if self.staircase:
            return
        epoch = self.current_epoch + batch / self.steps_per_epoch
        if self._in_range(epoch):
            self._adjust(epoch)

    def on_batch_end(self, batch, logs=None):
        if self._restore_momentum is not None:
            self._set_momentum(self.model.optimizer, self._restore_momentum)
            self._restore_momentum = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(np.asarray(self.model.optimizer.learning_rate))


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Ramp the learning rate from ``initial_lr / size()`` to ``initial_lr`` over
    ``warmup_epochs`` (per batch), as Horovod's (Goyal et al., 2017)."""

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True,
                 steps_per_epoch=None, verbose=0):
        def multiplier(epoch):
            n = size()
            return 1.0 / n * (epoch * (n - 1) / warmup_epochs + 1)
        super().__init__(initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs,
                         staircase=False, momentum_correction=momentum_correction,
                         steps_per_epoch=steps_per_epoch, verbose=verbose)
        self.warmup_epochs = warmup_epochs

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == self.warmup_epochs - 1 and self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to "
                  f"{float(np.asarray(self.model.optimizer.learning_rate)):g}.")


__all__ = ["BroadcastGlobalVariablesCallback", "LearningRateScheduleCallback",
           "LearningRateWarmupCallback", "MetricAverageCallback"]
