"""Collectives among shoal actors: start N actors and form one group among them.

    @shoal.remote
    class Worker:
        def step(self, x):
            return self.comm.allreduce(np.asarray(x, float))   # self.comm: the group

    workers = collective.create_actor_group(Worker, 4, name="w")
    shoal.get([w.step.remote(i) for i, w in enumerate(workers)])

Each actor gets ``self.comm`` (its Communicator, rank = its index) before
``create_actor_group`` returns; the group forms through the cluster's
key-value store (``shoal.get_kv_store()``).
"""
from __future__ import annotations


def _member_class(cls):
    class CollectiveMember(cls):
        def shoal_join_group(self, rank, world_size, store, name, backend, timeout, config):
            from shoal.collective.group import init_group
            self.comm = init_group(rank, world_size, store, backend=backend, name=name,
                                   timeout=timeout, config=config)
            return rank

        def shoal_leave_group(self):
            comm = getattr(self, "comm", None)
            if comm is not None:
                comm.destroy()
            return True

    CollectiveMember.__name__ = cls.__name__
    CollectiveMember.__qualname__ = cls.__qualname__
    return CollectiveMember


def create_actor_group(actor_class, n: int, *args, name: str = "actors", backend: str = "auto",
                       timeout: float = 300.0, config=None, actor_options: dict | None = None,
                       **kwargs) -> list:
    """Start ``n`` actors of ``actor_class`` and form a group among them.

    Args:
        actor_class: a plain class or a ``@shoal.remote`` class; its
            instances get ``self.comm``.
        n: number of actors (the group's world size).
        *args, **kwargs: constructor arguments of every actor.
        name: the group's name (distinct groups need distinct names).
        backend, timeout, config: as for ``init_group``.
        actor_options: options for ``.options(...)`` (num_cpus, ...); the
            default asks for no CPU so that ``n`` may exceed the cores.

    Returns:
        The actor handles, in rank order. Call ``leave_actor_group`` (or kill
        the actors) to end the group.

    Raises:
        ValueError: ``n`` < 1.
        CollectiveError: the group did not form within ``timeout``.
    """
    import shoal
    from shoal.core.api import ActorClass

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of actors, got {n!r}")
    if isinstance(actor_class, ActorClass):
        base, opts = actor_class._cls, dict(actor_class._options)
    else:
        base, opts = actor_class, {}
    opts.setdefault("num_cpus", 0)
    opts.update(actor_options or {})
    remote_cls = shoal.remote(**opts)(_member_class(base)) if opts else shoal.remote(_member_class(base))
    store = shoal.get_kv_store()
    actors = [remote_cls.remote(*args, **kwargs) for _ in range(n)]
    try:
        shoal.get([a.shoal_join_group.remote(i, n, store, name, backend, timeout, config)
                   for i, a in enumerate(actors)], timeout=timeout + 30)
    except BaseException:
        for a in actors:
            shoal.kill(a)
        raise
    return actors


def leave_actor_group(actors) -> None:
    """Destroy the group inside each actor of ``actors`` (the actors keep running)."""
    import shoal
    shoal.get([a.shoal_leave_group.remote() for a in actors])
