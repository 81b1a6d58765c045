"""Keras callbacks for loops run by ``shoal.train.Trainer``; imports TensorFlow (the ``tf``
extra). ``keras`` is ``tf.keras``, as in Ray Train's: Keras 3, or Keras 2 (tf_keras) when the
loop sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads, the Keras whose ``model.fit``
runs under MultiWorkerMirroredStrategy with several workers."""
from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

from shoal.train.checkpoint import Checkpoint
from shoal.train.context import get_checkpoint, get_context, report

keras = tf.keras
MODEL_FILE = "model.keras"
STATE_FILE = "keras_state.json"


class ReportCheckpointCallback(keras.callbacks.Callback):
    """Report Keras' logs through ``shoal.train.report`` at the end of every epoch, with the
    model saved as a checkpoint (``model.keras`` in the checkpoint's directory), as Ray
    Train's ``ReportCheckpointCallback``.

    Args:
        metrics: names of the logs to report (all by default), or a dict
            {reported name: log name}.
        checkpoint: save the model with each report (rank 0 writes it).
        frequency: report every ``frequency`` epochs.
    """

    def __init__(self, metrics=None, checkpoint: bool = True, frequency: int = 1):
        super().__init__()
        if isinstance(metrics, (list, tuple)):
            metrics = {m: m for m in metrics}
        self.metrics, self.checkpoint, self.frequency = metrics, checkpoint, int(frequency)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.frequency:
            return
        logs = dict(logs or {})
        picked = logs if self.metrics is None else {k: logs[v] for k, v in self.metrics.items()}
        metrics = {k: float(v) for k, v in picked.items()}
        metrics["epoch"] = epoch + 1
        if not self.checkpoint:
            report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="shoal-keras-") as d:
            # every rank saves (a strategy's variables may need every worker), rank 0's is kept
            self.model.save(os.path.join(d, MODEL_FILE))
            with open(os.path.join(d, STATE_FILE), "w") as f:
                json.dump({"epoch": epoch + 1}, f)
            ckpt = Checkpoint.from_directory(d) if get_context().rank == 0 else None
            report(metrics, checkpoint=ckpt)


def resume(checkpoint: Checkpoint | None = None, **load_kwargs):
    """``(model, initial_epoch)`` to continue training from a ReportCheckpointCallback
    checkpoint (default: the one the run resumes from after a failure): the saved Keras
    model, compiled, and the epoch after the one it was saved at; ``(None, 0)`` on a
    fresh start. Pass ``initial_epoch`` to ``fit``."""
    ckpt = checkpoint if checkpoint is not None else get_checkpoint()
    if ckpt is None:
        return None, 0
    with tempfile.TemporaryDirectory(prefix="shoal-keras-") as d:
        path = ckpt.to_directory(d)
        model = keras.models.load_model(os.path.join(path, MODEL_FILE), **load_kwargs)
        with open(os.path.join(path, STATE_FILE)) as f:
            epoch = json.load(f)["epoch"]
    return model, epoch
