"""``horovod.keras`` on shoal: the same API as ``shoal.horovod.tensorflow.keras``."""
from shoal.horovod.tensorflow.keras import *  # noqa: F401,F403
from shoal.horovod.tensorflow.keras import __all__, callbacks  # noqa: F401
