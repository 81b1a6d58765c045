"""Keras models trained on 2 workers: tf.distribute.MultiWorkerMirroredStrategy (TensorFlow's
own collectives over gRPC, the anchor) against shoal's ShoalStrategy (the same tf.distribute
code, reductions on shoal.collective), shoal.horovod.tensorflow (DistributedGradientTape)
and shoal.horovod.keras (DistributedOptimizer in ``model.fit``), samples/s.

    python benchmarks/tf.py [--workers 2] [--rounds 2] [--steps 30] [--models mlp,cnn]

Each run is one ``shoal launch`` of the workers for one system (TensorFlow creates the
strategy before any op, so the systems do not share processes); runs alternate, every
system once per round. A worker limits TensorFlow to one intra-op thread, builds each Keras
model (an MLP 784-512-512-10 and a small CNN on 28x28x1) and trains it on a fixed batch of
``--batch`` samples per worker with SGD (learning rate 0.01).

The first three systems and "local" run the same custom ``tf.function`` training step
(forward, GradientTape, SGD update); they differ only in how the gradients are averaged:
the strategy's ``all_reduce`` inside ``strategy.run`` (MWMS: TF_CONFIG names the workers
on 127.0.0.1; ShoalStrategy: the group of ``shoal launch``), or
``hvd.DistributedGradientTape``. "local" trains the same workers without averaging at all:
the ceiling any averaging can reach on this machine, quoted so that the ratios can be read
against it.

"hvdkeras" is trained the way a Horovod Keras user does: ``model.compile(optimizer=
hvd.DistributedOptimizer(keras.optimizers.SGD(0.01)), loss=..., jit_compile=False)`` and
``model.fit`` over a ``tf.data`` dataset of the fixed batch repeated, with
``hvd.callbacks.BroadcastGlobalVariablesCallback(0)``. Its row is ``model.fit`` against
MultiWorkerMirroredStrategy's custom loop: Keras 3's ``Model.fit`` does not run under
MultiWorkerMirroredStrategy with more than one worker (keras-team/keras#20585), so the
anchor stays a custom loop, and ``model.fit`` adds per-step work of its own (callbacks,
the data adapter's iterator, the loss tracker). "fitlocal" runs the same ``model.fit``
with a plain SGD and no Horovod: that row's ceiling, so that what the averaging costs
inside ``model.fit`` can be read apart from what ``model.fit`` costs.

``model.fit`` against ``model.fit``: Keras 2 (tf_keras, ``TF_USE_LEGACY_KERAS=1``) runs
``model.fit`` under MultiWorkerMirroredStrategy with several workers, so the last three
systems train the same way on Keras 2: "mwmsfit" compiles and fits inside
MultiWorkerMirroredStrategy's scope, "shoalfit2" inside ShoalStrategy's, "hvdkeras2" is
"hvdkeras" on Keras 2, "fitlocal2" its ceiling. Under a strategy a dataset's batch is the
global batch, which each worker cuts to its part, so the strategies' workers feed a batch
of ``--batch`` x workers rows (not sharded) and train on ``--batch`` rows a step, as the
others do. They run when tf_keras is installed (``pip install --no-deps
tf-keras==<TensorFlow's version>``).

After untimed warm-up (3 steps that trace), ``--repeats`` timed runs of ``--steps``
steps; the ``model.fit`` systems run one ``model.fit(steps_per_epoch=--steps,
epochs=1 + --repeats)`` whose first epoch traces and whose other epochs are timed by a
callback (from ``on_epoch_begin`` to ``on_epoch_end``: what a user's epoch costs, not the
fit's setup). The figure is the best samples/s over rounds and repeats; the ratio is
shoal's over the anchor's. The CPU time rank 0's process spent per step (all its
threads, best of the same runs) is printed too: on a shared, oversubscribed host it moves
less with the load than wall time does. Needs the ``tf`` and ``train`` extras.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _model(kind: str):
    from tensorflow import keras
    if kind == "mlp":
        return keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                                 keras.layers.Dense(512, activation="relu"),
                                 keras.layers.Dense(10)]), (784,)
    return keras.Sequential([keras.Input((28, 28, 1)),
                             keras.layers.Conv2D(16, 3, activation="relu"),
                             keras.layers.MaxPooling2D(),
                             keras.layers.Conv2D(32, 3, activation="relu"),
                             keras.layers.MaxPooling2D(),
                             keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10)]), (28, 28, 1)


def worker(args) -> None:
    rank, n = int(os.environ["SHOAL_RANK"]), int(os.environ["SHOAL_WORLD_SIZE"])
    mwms, local = args.system in ("mwms", "mwmsfit"), args.system == "local"
    in_scope = args.system in ("mwmsfit", "shoalfit2")    # model.fit inside the strategy
    uses_strategy = args.system in ("mwms", "shoal", "local")
    if mwms:
        ports = [int(p) for p in args.ports.split(",")]
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": rank}})
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    if mwms:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.system in ("shoal", "shoalfit2"):
        from shoal.train.tf_distribute import ShoalStrategy
        strategy = ShoalStrategy()
    elif args.system == "local":
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    from tensorflow import keras           # Keras 3, or Keras 2 for the KERAS2 systems
    fit = args.system in ("hvdkeras", "fitlocal", *KERAS2)
    hvd = None
    if args.system == "hvd":
        import shoal.horovod.tensorflow as hvd
        hvd.init()
    elif args.system in ("hvdkeras", "hvdkeras2"):
        import shoal.horovod.keras as hvd
        hvd.init()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    results = {}
    for kind in args.models.split(","):
        keras.utils.set_random_seed(0)
        with strategy.scope() if in_scope else contextlib.nullcontext():
            model, shape = _model(kind)
        rng = np.random.default_rng(rank)
        x = tf.constant(rng.normal(size=(args.batch, *shape)).astype(np.float32))
        y = tf.constant(rng.integers(0, 10, size=(args.batch,)))
        lr = tf.constant(0.01)
        variables = model.trainable_variables
        if fit:
            if in_scope:                   # the global batch: each worker trains on its part
                with strategy.scope():
                    results[kind] = _fit(args, model, tf.concat([x] * n, 0),
                                         tf.concat([y] * n, 0), n, hvd)
            else:
                results[kind] = _fit(args, model, x, y, n, hvd)
            continue

        def grads_of(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(yb, model(xb, training=True)))
            return tape, loss

        if uses_strategy:
            @tf.function
            def step(xb, yb):
                def replica(xr, yr):
                    tape, loss = grads_of(xr, yr)
                    grads = tape.gradient(loss, variables)
                    if not local:
                        ctx = tf.distribute.get_replica_context()
                        grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
                    for v, g in zip(variables, grads):
                        v.assign_sub(lr * g)
                strategy.run(replica, args=(xb, yb))
        else:
            @tf.function
            def step(xb, yb):
                tape, loss = grads_of(xb, yb)
                grads = hvd.DistributedGradientTape(tape).gradient(loss, variables)
                for v, g in zip(variables, grads):
                    v.assign_sub(lr * g)

        for _ in range(3):
            step(x, y)                     # trace and warm up
        best, cpu = 0.0, float("inf")
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step(x, y)
            best = max(best, args.steps * args.batch * n / (time.perf_counter() - t0))
            cpu = min(cpu, (time.process_time() - c0) / args.steps * 1e3)
        results[kind] = (best, cpu)
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    if hvd is not None:
        hvd.shutdown()


def _fit(args, model, x, y, n, hvd) -> tuple[float, float]:
    """Train as a (Horovod) Keras user does: compile, then one model.fit on a tf.data dataset;
    every epoch (``--steps`` steps) after the first (tracing) is timed by a callback."""
    import tensorflow as tf
    from tensorflow import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.cpu = 0.0, float("inf")

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:                 # traced the train function
                return
            dt, dc = time.perf_counter() - self.t0, time.process_time() - self.c0
            self.best = max(self.best, args.steps * args.batch * n / dt)
            self.cpu = min(self.cpu, dc / args.steps * 1e3)

    opt = keras.optimizers.SGD(0.01)
    callbacks = []
    if hvd is not None:
        opt = hvd.DistributedOptimizer(opt)
        callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0)]
    model.compile(optimizer=opt, jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    options = tf.data.Options()            # each worker feeds its own batch (MWMS: no sharding)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    data = data.with_options(options)
    timer = EpochTimer()
    model.fit(data, steps_per_epoch=args.steps, epochs=1 + args.repeats, verbose=0,
              callbacks=[*callbacks, timer])
    return timer.best, timer.cpu


SYSTEMS = {"mwms": "MultiWorkerMirroredStrategy", "shoal": "ShoalStrategy",
           "hvd": "shoal.horovod.tensorflow", "local": "no averaging (ceiling)",
           "hvdkeras": "shoal.horovod.keras, model.fit",
           "fitlocal": "model.fit, no averaging (its ceiling)",
           "mwmsfit": "Keras 2: MultiWorkerMirroredStrategy, model.fit",
           "shoalfit2": "Keras 2: ShoalStrategy, model.fit",
           "hvdkeras2": "Keras 2: shoal.horovod.keras, model.fit",
           "fitlocal2": "Keras 2: model.fit, no averaging (its ceiling)"}
COLUMNS = ("shoal", "hvd", "local", "hvdkeras", "fitlocal")
# model.fit against model.fit, on Keras 2
KERAS2 = ("mwmsfit", "shoalfit2", "hvdkeras2", "fitlocal2")


def _run(system: str, args) -> dict:
    ports = ",".join(map(str, _free_ports(args.workers)))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    if system in KERAS2:
        env["TF_USE_LEGACY_KERAS"] = "1"
    cmd = [sys.executable, "-m", "shoal.launch", "-n", str(args.workers), __file__, "--worker",
           "--system", system, "--ports", ports, "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--batch", str(args.batch), "--models", args.models,
           "--inter-op", str(args.inter_op)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    line = next((ln for ln in out.stdout.splitlines() if "RESULT " in ln), None)
    if out.returncode or line is None:
        sys.exit(f"{system} workers failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n"
                 f"{out.stderr[-5000:]}")
    return json.loads(line.split("RESULT ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64, help="samples per worker per step")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--inter-op", type=int, default=1,
                    help="TensorFlow inter-op threads per worker (intra-op is 1)")
    ap.add_argument("--repeats", type=int, default=2, help="timed fits per run")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="systems to run (the anchor, mwms, always runs)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system", default="hvd", help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    wanted = args.systems.split(",")
    if importlib.util.find_spec("tf_keras") is None and any(k in wanted for k in KERAS2):
        print("tf_keras is not installed: the Keras 2 model.fit systems are left out "
              "(pip install --no-deps tf-keras==<TensorFlow's version>)")
        wanted = [k for k in wanted if k not in KERAS2]
    if any(k in wanted for k in KERAS2[1:]):
        wanted.append("mwmsfit")           # their anchor
    systems = ["mwms"] + [k for k in SYSTEMS if k != "mwms" and k in wanted]
    columns = [k for k in COLUMNS if k in systems]
    columns2 = [k for k in KERAS2[1:] if k in systems]
    load0 = os.getloadavg()
    best: dict = {}
    for _ in range(args.rounds):           # alternating: every system once per round
        for system in systems:
            for kind, (sps, cpu) in _run(system, args).items():
                old = best.setdefault(kind, {}).get(system, (0.0, float("inf")))
                best[kind][system] = (max(old[0], sps), min(old[1], cpu))
    load1 = os.getloadavg()
    print(f"{args.workers} workers, 1 intra-op thread each, batch {args.batch}/worker, "
          f"{args.steps} steps, best of {args.rounds} alternating rounds x {args.repeats} fits")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if columns:
        header = ("| model | MultiWorkerMirroredStrategy (custom loop) | "
                  + " | ".join(SYSTEMS[k] for k in columns) + " |\n|---|"
                  + "---:|" * (1 + len(columns)))
        print("samples/s (ratio: / MultiWorkerMirroredStrategy's). The model.fit columns are "
              "Keras' model.fit against MultiWorkerMirroredStrategy's custom loop")
        print(header)
        for kind, row in best.items():
            a = row["mwms"][0]
            cells = [f"{row[k][0]:,.0f} ({row[k][0] / a:.2f}x)" for k in columns]
            print(f"| {kind} | {a:,.0f} | " + " | ".join(cells) + " |")
        print("rank 0's CPU ms per step, all threads (ratio: MultiWorkerMirroredStrategy's / it)")
        print(header)
        for kind, row in best.items():
            a = row["mwms"][1]
            cells = [f"{row[k][1]:.1f} ({a / row[k][1]:.2f}x)" for k in columns]
            print(f"| {kind} | {a:.1f} | " + " | ".join(cells) + " |")
    if not columns2:
        return
    header = ("| model | " + " | ".join(SYSTEMS[k] for k in ("mwmsfit", *columns2))
              + " |\n|---|" + "---:|" * (1 + len(columns2)))
    print("model.fit against model.fit on Keras 2: samples/s (ratio: / "
          "MultiWorkerMirroredStrategy's model.fit), then rank 0's CPU ms per step")
    print(header)
    for kind, row in best.items():
        a = row["mwmsfit"]
        cells = [f"{row[k][0]:,.0f} ({row[k][0] / a[0]:.2f}x)" for k in columns2]
        print(f"| {kind} samples/s | {a[0]:,.0f} | " + " | ".join(cells) + " |")
        cells = [f"{row[k][1]:.1f} ({a[1] / row[k][1]:.2f}x)" for k in columns2]
        print(f"| {kind} CPU ms/step | {a[1]:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
