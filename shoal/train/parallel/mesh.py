"""``Mesh``: the one place that knows the degrees of parallelism of a training gang.

``Mesh(dp=, tp=, pp=)`` lays the gang out as a ``pp x dp x tp`` grid on
shoal.collective's Mesh (tp innermost, so a tensor-parallel group is a run of
consecutive ranks, usually on one host; pp outermost) and builds every
sub-group once. Strategies take their group from here (``mesh.dp_group``,
``mesh.tp_group``, ``mesh.pp_group``) and nowhere else.
"""
from __future__ import annotations

from shoal.exceptions import InvalidInputError

DIMS = ("pp", "dp", "tp")   # outermost first


class Mesh:
    """A dp x tp x pp layout of the ranks of a communicator, with one group per dimension.

    Args:
        dp: data-parallel (sharded or replicated) degree; ``None`` takes what
            is left of the world size after ``tp`` and ``pp``.
        tp: tensor-parallel degree.
        pp: pipeline-parallel degree (number of stages).
        comm: the communicator over every rank of the grid; default: this
            training session's (``shoal.train.get_communicator()``).

    Every rank of ``comm`` must construct the mesh (it forms sub-groups).

    Attributes:
        rank, world_size: this rank's place in ``comm`` and its size.
        dp_rank, tp_rank, pp_rank: this rank's coordinate along each dimension.
        dp_group, tp_group, pp_group: communicators among the ranks that
            differ only along that dimension.

    Raises:
        InvalidInputError: a degree below 1, or ``dp * tp * pp`` differs from
            the world size (the message names the degrees and the size).
    """

    def __init__(self, dp: int | None = None, tp: int = 1, pp: int = 1, *, comm=None):
        if comm is None:
            from shoal.train import get_communicator
            comm = get_communicator()
        world = comm.world_size
        for name, v in (("tp", tp), ("pp", pp)) + ((("dp", dp),) if dp is not None else ()):
            if not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"Mesh {name}={v!r}: each degree must be an int >= 1")
        if dp is None:
            if world % (tp * pp):
                raise InvalidInputError(
                    f"Mesh(tp={tp}, pp={pp}) does not divide the world size {world}; "
                    f"pick tp and pp whose product divides {world}")
            dp = world // (tp * pp)
        if dp * tp * pp != world:
            raise InvalidInputError(
                f"Mesh(dp={dp}, tp={tp}, pp={pp}) has {dp * tp * pp} positions but the gang has "
                f"{world} ranks; dp * tp * pp must equal the world size (or pass dp=None)")
        from shoal.collective import Mesh as _GridMesh
        self.dp, self.tp, self.pp = dp, tp, pp
        self.comm = comm
        self.rank, self.world_size = comm.rank, world
        self._grid = _GridMesh((pp, dp, tp), DIMS, comm)
        self.pp_rank, self.dp_rank, self.tp_rank = (self._grid.coords[d] for d in DIMS)
        self.pp_group, self.dp_group, self.tp_group = (self._grid.get_group(d) for d in DIMS)

    @property
    def coords(self) -> dict:
        """This rank's coordinate per dimension: {"pp": .., "dp": .., "tp": ..}."""
        return dict(self._grid.coords)

    def group(self, dim: str):
        """The communicator along ``dim`` ("dp", "tp" or "pp")."""
        if dim not in DIMS:
            raise InvalidInputError(f"Mesh has no dimension {dim!r}; use one of {DIMS}")
        return self._grid.get_group(dim)

    def ranks_of(self, dim: str) -> list[int]:
        """Ranks of ``comm`` in this rank's group along ``dim``, in group order."""
        if dim not in DIMS:
            raise InvalidInputError(f"Mesh has no dimension {dim!r}; use one of {DIMS}")
        return self._grid.ranks_of(dim)

    def rank_at(self, *, dp: int = 0, tp: int = 0, pp: int = 0) -> int:
        """The rank of ``comm`` at grid position (dp, tp, pp)."""
        return int(self._grid.grid[pp, dp, tp])

    def destroy(self) -> None:
        """Destroy the sub-groups (not ``comm``)."""
        self._grid.destroy()

    def __repr__(self) -> str:
        return (f"Mesh(dp={self.dp}, tp={self.tp}, pp={self.pp}; rank {self.rank} at "
                f"dp={self.dp_rank}, tp={self.tp_rank}, pp={self.pp_rank})")
