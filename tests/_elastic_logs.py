"""Reading what the elastic tests' training loops log, shared by tests/train, tests/horovod
and tests/multinode.

Each process appends JSON rows to ``{out}/{kind}-{pid}``: "steps" rows are a rank's batch,
written before the step as ``[epoch, rank, world_size, indices, step, generation, ...]``;
"sync" rows are what a rank holds after each sync."""
import glob
import json


def rows(out: str, kind: str) -> list:
    """(pid, row) of every line of every ``{out}/{kind}-{pid}`` file."""
    return [(int(f.rsplit("-", 1)[1]), json.loads(line))
            for f in glob.glob(f"{out}/{kind}-*") for line in open(f).read().splitlines()]


def committed_batches(out: str) -> list:
    """(epoch, indices) of every rank's batch of every committed step.

    A step cut short (a rank died before the gradients were summed) is done again by a
    later generation of the gang, whose rows replace it; a step whose sum completed counts
    the batch of a rank that died right after (its gradient is in the committed state)."""
    by_step: dict = {}
    for _, (epoch, _, _, idx, step, gen, *_) in rows(out, "steps"):
        by_step.setdefault(step, {}).setdefault(gen, []).append((epoch, idx))
    return [row for gens in by_step.values() for row in gens[max(gens)]]


def assert_each_epoch_used_every_sample_once(out: str, n: int, max_world: int) -> None:
    """Each finished epoch used every one of ``n`` samples once, plus at most
    ``max_world - 1`` repeats (DistributedSampler's end-of-epoch padding). The last epoch
    is left out: a run stops when it is done, not at an epoch's end."""
    seen: dict = {}
    for epoch, idx in committed_batches(out):
        seen.setdefault(epoch, []).extend(idx)
    assert seen, f"no committed step logged under {out}"
    for epoch in sorted(seen)[:-1]:
        assert set(seen[epoch]) == set(range(n)), epoch
        assert len(seen[epoch]) - n < max_world, (epoch, len(seen[epoch]))
