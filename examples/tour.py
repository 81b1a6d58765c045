"""A short tour of shoal: tasks, actors and objects on the embedded cluster."""
import time

import numpy as np

import shoal

t = time.perf_counter()
shoal.init()  # a local cluster: one worker process per CPU, nothing to install
print(f"cluster up in {time.perf_counter() - t:.2f}s: {shoal.cluster_resources()['CPU']:g} CPUs")


# Tasks: a decorator away from an ordinary function.
@shoal.remote
def square(x):
    return x * x


print("squares:", shoal.get([square.remote(i) for i in range(8)]))


# Objects: big arrays live in shared memory; tasks read them without a copy.
@shoal.remote
def column_means(block):
    return block.mean(axis=0)


data = np.random.default_rng(0).random((1_000_000, 8))
ref = shoal.put(data)                     # stored once
means = shoal.get([column_means.remote(ref) for _ in range(4)])
print("column means agree:", all(np.allclose(m, data.mean(axis=0)) for m in means))


# Nested work: tasks submit tasks and wait for them without deadlocking.
@shoal.remote
def tree_sum(lo, hi):
    if hi - lo <= 1000:
        return sum(range(lo, hi))
    mid = (lo + hi) // 2
    return sum(shoal.get([tree_sum.remote(lo, mid), tree_sum.remote(mid, hi)]))


print("tree sum of 0..9999:", shoal.get(tree_sum.remote(0, 10_000)))


# Actors: a class whose instance lives in its own process and keeps state.
@shoal.remote
class Counter:
    def __init__(self):
        self.count = 0

    def add(self, k):
        self.count += k
        return self.count


counter = Counter.remote()
shoal.get([counter.add.remote(1) for _ in range(100)])
print("counter after 100 calls:", shoal.get(counter.add.remote(0)))

# Failures are expected events: a crashed worker's task is retried.
@shoal.remote(max_retries=2)
def sometimes_crashes(path):
    import os
    with open(path, "a") as f:
        f.write(".")
    if len(open(path).read()) == 1:
        os._exit(1)  # the first attempt's process dies
    return "survived"


import tempfile

with tempfile.NamedTemporaryFile() as f:
    print("crash and retry:", shoal.get(sometimes_crashes.remote(f.name)))

shoal.shutdown()
print("done: no process or shared memory left behind")
