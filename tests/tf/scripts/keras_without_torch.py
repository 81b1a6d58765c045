"""Horovod's Keras and TensorFlow faces in a process where torch cannot be imported (as if
it were not installed). Run: shoal launch -n 2 python keras_without_torch.py; rank 0
prints the results as JSON."""
import json
import sys



class _NoTorch:
    """Refuses torch, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import shoal.horovod as hvd_torch  # noqa: E402
import shoal.horovod.keras  # noqa: E402,F401
import shoal.horovod.tensorflow.keras as hvd  # noqa: E402

hvd.init()
out = {"size": hvd.size(),
       "allreduce": hvd.allreduce(tf.constant([1.0 + hvd.rank()])).numpy().tolist(),
       "object": hvd.broadcast_object({"from": hvd.rank()}, root_rank=1),
       "objects": hvd.allgather_object(hvd.rank())}
keras.utils.set_random_seed(hvd.rank())
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
x = np.random.default_rng(hvd.rank()).normal(size=(32, 4)).astype(np.float32)
model.fit(x, x.sum(axis=1, keepdims=True), batch_size=8, epochs=1, verbose=0,
          callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
out["weights"] = [float(np.asarray(w).sum()) for w in model.get_weights()]
try:
    hvd_torch.allreduce
except ImportError as e:
    out["torch_face"] = f"{type(e).__name__}: {e}"
out["torch_loaded"] = "torch" in sys.modules
rank = hvd.rank()
hvd.shutdown()
if rank == 0:
    print("RESULT " + json.dumps(out), flush=True)
