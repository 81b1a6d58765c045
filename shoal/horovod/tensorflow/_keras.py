"""The Keras the Horovod Keras face serves: TensorFlow's ``tf.keras``, as Horovod's
``horovod.tensorflow.keras`` follows it. That is Keras 3, or Keras 2 (the ``tf_keras``
package) under ``TF_USE_LEGACY_KERAS=1``: the Keras that Horovod's own Keras examples
are written for, and the one whose ``model.fit`` runs under MultiWorkerMirroredStrategy."""
from __future__ import annotations

import tensorflow as tf

keras = tf.keras

#: Keras 2 (tf_keras): optimizers apply gradients through ``apply_gradients``; Keras 3's
#: go through ``apply`` and are stateless-capable.
KERAS2 = not hasattr(keras.optimizers.Optimizer, "stateless_apply")


def optimizer_types() -> tuple:
    """The optimizer base classes of this Keras (Keras 2 keeps its older ``legacy`` ones)."""
    legacy = getattr(getattr(keras.optimizers, "legacy", None), "Optimizer", None)
    if KERAS2 and isinstance(legacy, type):
        return keras.optimizers.Optimizer, legacy
    return (keras.optimizers.Optimizer,)


def optimizer_variables(opt) -> list:
    """An optimizer's variables: a list in Keras 3 and Keras 2's optimizers, a method in
    Keras 2's legacy ones."""
    v = opt.variables
    return list(v() if callable(v) and not isinstance(v, (list, tuple)) else v)
