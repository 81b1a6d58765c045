"""TensorFlow on a shoal.train gang: ``TensorflowConfig`` sets ``TF_CONFIG`` on every
worker, as Ray Train's TensorflowTrainer does, so the loop builds
``tf.distribute.MultiWorkerMirroredStrategy()`` and trains with Keras or a custom loop.

    def loop(config):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            model = build_and_compile()
        model.fit(ds, epochs=3, callbacks=[ReportCheckpointCallback()])  # shoal.train.keras

    Trainer(loop, num_workers=2, strategy=TensorflowConfig()).fit()

This module does not import TensorFlow.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass


@dataclass
class TensorflowConfig:
    """A Trainer strategy for TensorFlow's own multi-worker training.

    Each worker binds a free port, the ports are exchanged through the gang's
    communicator, and ``TF_CONFIG`` names every worker (``worker`` tasks,
    index = rank) before the loop starts; it is removed when the loop ends.
    The shoal communicator stays available to the loop (reports, barriers,
    shoal.horovod).

    Args:
        backend: the shoal communicator's backend ("auto", "native", "torch").
        host: the address other workers reach this one at; default 127.0.0.1
            when the gang is on one node, else this node's host name.
    """

    backend: str = "auto"
    host: str | None = None

    def worker_env(self, comm, context) -> dict:
        """The environment for one worker: ``{"TF_CONFIG": ...}`` (collective: every rank calls it)."""
        host = self.host or ("127.0.0.1" if context.local_world_size == context.world_size
                             else socket.gethostname())
        with socket.socket() as s:
            s.bind((host if host != socket.gethostname() else "", 0))
            port = s.getsockname()[1]
        workers = comm.allgather_object(f"{host}:{port}")
        return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": comm.rank}})}


def tf_config() -> dict | None:
    """This worker's parsed ``TF_CONFIG`` (None outside a TensorflowConfig gang)."""
    raw = os.environ.get("TF_CONFIG")
    return json.loads(raw) if raw else None
