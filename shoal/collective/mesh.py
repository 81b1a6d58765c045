"""``Mesh``: the one place that turns a group into a grid of parallelism dimensions.

Ranks are laid out row-major over ``shape`` (``arange(world).reshape(shape)``,
as picotron's process-group manager), so with ``Mesh((dp, tp), ("dp", "tp"))``
the tp groups are runs of consecutive ranks. Every sub-group is built once,
at construction (collective: every rank of ``comm`` constructs the mesh).
"""
from __future__ import annotations

import numpy as np


class Mesh:
    """A dp x tp x pp (any names) grid over ``comm`` with one sub-group per dimension.

    Args:
        shape: size of each dimension; their product must equal ``comm.world_size``.
        dim_names: a distinct name per dimension, e.g. ("dp", "tp", "pp").
        comm: the communicator over all ranks of the grid.

    Attributes:
        coords: this rank's coordinate per dimension name.
        grid: the rank of every grid position (a NumPy array of ``shape``).
    """

    def __init__(self, shape, dim_names, comm):
        shape, dim_names = tuple(int(s) for s in shape), tuple(dim_names)
        if len(shape) != len(dim_names) or len(set(dim_names)) != len(dim_names):
            raise ValueError(f"Mesh needs one distinct name per dimension; got shape {shape} "
                             f"and dim_names {dim_names}")
        if any(s < 1 for s in shape) or int(np.prod(shape)) != comm.world_size:
            raise ValueError(f"Mesh shape {shape} has {int(np.prod(shape))} positions but the group "
                             f"has {comm.world_size} ranks; the product must equal the world size")
        self.shape, self.dim_names, self.comm = shape, dim_names, comm
        self.grid = np.arange(comm.world_size).reshape(shape)
        coord = np.unravel_index(comm.rank, shape)
        self.coords = {n: int(c) for n, c in zip(dim_names, coord)}
        self._groups = {}
        for d, dname in enumerate(dim_names):
            others = [int(c) for i, c in enumerate(coord) if i != d]
            other_shape = [s for i, s in enumerate(shape) if i != d]
            color = int(np.ravel_multi_index(others, other_shape)) if others else 0
            self._groups[dname] = comm.split(color, key=int(coord[d]),
                                             name=f"{comm.name}/mesh-{'x'.join(map(str, shape))}-{dname}-{color}")

    def get_group(self, dim: str):
        """The communicator among the ranks that differ only along ``dim``."""
        if dim not in self._groups:
            raise KeyError(f"no dimension {dim!r} in this mesh; it has {list(self.dim_names)}")
        return self._groups[dim]

    def size(self, dim: str) -> int:
        """The number of ranks along dimension ``dim``."""
        return self.shape[self.dim_names.index(dim)]

    def ranks_of(self, dim: str) -> list[int]:
        """Global ranks of this rank's group along ``dim``, in group order."""
        d = self.dim_names.index(dim)
        index = tuple(slice(None) if i == d else self.coords[n] for i, n in enumerate(self.dim_names))
        return [int(r) for r in self.grid[index]]

    def destroy(self) -> None:
        """Destroy the sub-groups this mesh made (not ``comm`` itself)."""
        for g in self._groups.values():
            if g is not None:
                g.destroy()

    def __repr__(self) -> str:
        dims = ", ".join(f"{n}={s}" for n, s in zip(self.dim_names, self.shape))
        return f"Mesh({dims}; rank {self.comm.rank} at {self.coords})"
