"""Which GPUs this node has, and which of them each GPU actor gets.

The node's GPU count is the ``GPU`` resource (``shoal.init(num_gpus=)``,
else detected: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set, else
the NVIDIA driver's ``/proc/driver/nvidia/gpus``, else ``nvidia-smi -L``),
so the detection needs neither torch nor a CUDA context in the driver. An
actor that asks for ``num_gpus`` starts with ``CUDA_VISIBLE_DEVICES`` naming
the GPUs it was given (as Ray does), so ``torch.device("cuda")`` in it is its
own GPU, and ``shoal.get_gpu_ids()`` there lists them. Whole GPUs go to one
actor each; fractional requests fill the fullest GPU that still has room
(so whole ones stay free). Tasks run in shared worker processes and get no
CUDA_VISIBLE_DEVICES of their own: give GPU work to actors.
"""
from __future__ import annotations

import math
import os

_EPS = 1e-9
ENV_IDS = "SHOAL_GPU_IDS"


def visible_gpu_ids() -> list[str]:
    """The ids of the GPUs this process may use (CUDA_VISIBLE_DEVICES' naming)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip() and x.strip() != "-1"]
    try:
        n = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        n = _nvidia_smi_count()
    return [str(i) for i in range(n)]


def _nvidia_smi_count() -> int:
    """GPUs ``nvidia-smi -L`` lists (hosts whose driver has no /proc entries)."""
    import shutil
    import subprocess
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class GpuIds:
    """The load (in GPUs) each device id of a node carries."""

    def __init__(self, ids: list[str], count: float):
        ids = list(ids)
        if len(ids) < math.ceil(count - _EPS):   # told more GPUs than were found: name them
            ids += [str(i) for i in range(len(ids), math.ceil(count - _EPS))]
        self.load = {i: 0.0 for i in ids[:math.ceil(count - _EPS)]}

    def take(self, amount: float) -> list[str]:
        """Device ids for a request of ``amount`` GPUs (recorded until ``give_back``)."""
        if amount <= _EPS or not self.load:
            return []
        if amount >= 1 - _EPS:
            need = math.ceil(amount - _EPS)
            free = [i for i, used in self.load.items() if used <= _EPS]
            if len(free) < need:   # a dying holder is not reaped yet: share the least loaded
                free += sorted((i for i in self.load if i not in free), key=self.load.get)
            got = free[:need]
            share = amount / len(got)
        else:
            fits = [i for i, used in self.load.items() if used + amount <= 1 + _EPS]
            pool = fits or list(self.load)
            got = [max(pool, key=self.load.get) if fits else min(pool, key=self.load.get)]
            share = amount
        for i in got:
            self.load[i] += share
        return got

    def give_back(self, ids: list[str], amount: float) -> None:
        if not ids:
            return
        share = amount / len(ids) if amount >= 1 - _EPS else amount
        for i in ids:
            if i in self.load:
                self.load[i] = max(0.0, self.load[i] - share)


def assigned_gpu_ids() -> list[str]:
    """The GPU ids this worker was given (empty in the driver and in CPU workers)."""
    env = os.environ.get(ENV_IDS, "")
    return [x for x in env.split(",") if x]
