"""Allreduce bandwidth and latency, shoal native vs torch.distributed Gloo (nccl-tests style).

    python benchmarks/collective.py            # 2 and 4 ranks, 4 KB..256 MB, + across netns
    python benchmarks/collective.py --quick    # a short run (up to 16 MB)

For each world size and buffer size (float32) it prints the time per
allreduce, algbw = bytes / time and busbw = algbw * 2(n-1)/n (what each rank
moves, as nccl-tests), for shoal's native backend and for Gloo in the same
rank processes, and the ratio. The two are timed in alternating rounds and
each keeps its best round, so load from other processes on a shared machine
skews neither side. The machine's limit is printed first: NumPy
memcpy bandwidth. When run as root it repeats the comparison across two
network namespaces joined by a veth pair (TCP between "hosts"), and once
more with the two ranks as actors on the two nodes of a real Ray cluster
(``ray start`` in each namespace, token authentication on; ``--only-ray``
runs just that case). With 2 ranks it also times point-to-point: a ping-pong
of ``send``/``recv`` (1 KB to 4 MB, torch tensors on both sides), reported as
the one-way time (half a round trip): what a pipeline's activation or
gradient costs on the critical path.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def memcpy_bandwidth(nbytes: int = 256 << 20) -> float:
    a = np.ones(nbytes, np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


ROUNDS = 3  # alternating native / Gloo timing rounds per size


def _iters(nbytes: int, quick: bool) -> int:
    budget = (128 << 20) if quick else (1 << 30)
    return int(min(600 if not quick else 150, max(3 * ROUNDS, budget // max(nbytes, 1))))


# ------------------------------------------------------------------ worker
def worker(args) -> None:
    import torch.distributed as dist

    from shoal import collective
    from shoal.core.kv import TCPStore

    rank, world = args.rank, args.world
    host, port = args.master.split(":")
    secret = bytes.fromhex(args.secret)
    store = TCPStore(host, int(port), secret=secret, is_server=rank == 0, timeout=60)
    comm = collective.init_group(rank, world, store, backend="native", name="bench", timeout=120)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{args.gloo_port}", rank=rank,
                            world_size=world)
    emit = lambda res: print(json.dumps(res), flush=True)  # noqa: E731
    time_allreduce(comm, dist, rank, [int(s) for s in args.sizes.split(",")], args.quick, emit)
    if world == 2:
        # where the ranks share a host, the same sends over TCP (the path between hosts) too
        tcp = None if comm.shm is None else collective.init_group(
            rank, world, store, backend="native", name="bench-tcp", timeout=120,
            config=collective.NativeConfig(p2p_ring_bytes=0))
        time_p2p(comm, dist, rank, P2P_SIZES, args.quick, emit, tcp)
        if tcp is not None:
            tcp.destroy()
    comm.destroy()
    dist.destroy_process_group()
    store.close()


def time_allreduce(comm, dist, rank, sizes, quick, emit=None) -> list[dict]:
    """Time shoal's ``comm`` against Gloo's default group in alternating rounds; rank 0 emits rows."""
    import torch
    rows = []
    for nbytes in sizes:
        n = nbytes // 4
        a = np.zeros(n, np.float32)  # zeros stay finite over repeated in-place sums
        t = torch.zeros(n, dtype=torch.float32)
        iters = max(2, _iters(nbytes, quick) // ROUNDS)
        ops = {"native": lambda: comm.allreduce(a), "gloo": lambda: dist.all_reduce(t)}
        for op in ops.values():
            for _ in range(2):
                op()
        # Rounds alternate between the two so that both see the same machine load; each
        # round's time is the slowest rank's mean, and each backend's figure its best round.
        best = {name: float("inf") for name in ops}
        for _ in range(ROUNDS):
            for name, op in ops.items():
                comm.barrier()
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    op()
                got = np.array([(time.perf_counter() - t0) / iters], np.float64)
                comm.allreduce(got, op="max")
                best[name] = min(best[name], float(got[0]))
        res = {"bytes": nbytes, **best}
        rows.append(res)
        if rank == 0 and emit is not None:
            emit(res)
    return rows


P2P_SIZES = (1 << 10, 64 << 10, 1 << 20, 4 << 20)


def time_p2p(comm, dist, rank, sizes, quick, emit=None, tcp=None) -> list[dict]:
    """Ping-pong between ranks 0 and 1, shoal's ``send``/``recv`` against Gloo's, alternating rounds.

    ``tcp``: a second group whose sends go over TCP, timed too ("native_tcp").
    """
    import torch
    rows = []
    peer = 1 - rank
    for nbytes in sizes:
        t = torch.zeros(nbytes // 4, dtype=torch.float32)
        iters = max(4, min(2000 if not quick else 400, (256 << 20) // nbytes) // ROUNDS)

        def pingpong(send, recv):
            def run():
                for _ in range(iters):
                    if rank == 0:
                        send(t, peer)
                        recv(t, peer)
                    else:
                        recv(t, peer)
                        send(t, peer)
            return run
        ops = {"native": pingpong(comm.send, comm.recv), "gloo": pingpong(dist.send, dist.recv)}
        if tcp is not None:
            ops["native_tcp"] = pingpong(tcp.send, tcp.recv)
        best = {name: float("inf") for name in ops}
        for k in range(ROUNDS + 1):         # the first round warms up
            for name, op in ops.items():
                comm.barrier()
                dist.barrier()
                t0 = time.perf_counter()
                op()
                got = np.array([(time.perf_counter() - t0) / iters / 2], np.float64)
                comm.allreduce(got, op="max")
                if k:
                    best[name] = min(best[name], float(got[0]))
        res = {"p2p": True, "bytes": nbytes, **best}
        rows.append(res)
        if rank == 0 and emit is not None:
            emit(res)
    return rows


def _launch(world, master, sizes, quick, prefix=None, env=None):
    secret = secrets.token_hex(16)
    gloo_port = _free_port(master.split(":")[0]) if prefix is None else 29731
    procs = []
    for r in range(world):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--rank", str(r), "--world",
               str(world), "--master", master, "--secret", secret, "--gloo-port", str(gloo_port),
               "--sizes", ",".join(map(str, sizes))] + (["--quick"] if quick else [])
        if prefix is not None:
            cmd = prefix(r) + cmd
        e = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **(env(r) if env else {}))
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                                      env=e, text=True))
    rows = []
    try:
        for line in procs[0].stdout:
            rows.append(json.loads(line))
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rows


def _free_port(host="127.0.0.1") -> int:
    import socket
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _fmt_size(n: int) -> str:
    for unit, k in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= k:
            return f"{n // k} {unit}"
    return f"{n} B"


def print_p2p_table(title: str, rows: list[dict]) -> None:
    tcp = all("native_tcp" in r for r in rows)
    print(f"\n{title}")
    print(f"{'size':>8} | {'native us':>10} {'GB/s':>7} | {'gloo us':>10} {'GB/s':>7} | {'speedup':>7}"
          + (f" | {'native TCP us':>13} {'speedup':>7}" if tcp else ""))
    for r in rows:
        nb, tn, tg = r["bytes"], r["native"], r["gloo"]
        print(f"{_fmt_size(nb):>8} | {tn * 1e6:10.1f} {nb / tn / 1e9:7.2f} | {tg * 1e6:10.1f} "
              f"{nb / tg / 1e9:7.2f} | {tg / tn:6.2f}x"
              + (f" | {r['native_tcp'] * 1e6:13.1f} {tg / r['native_tcp']:6.2f}x" if tcp else ""))
    print("(one way: half a send/recv round trip between ranks 0 and 1; speedup = gloo time / "
          "native time" + ("; native TCP: the same sends with p2p_ring_bytes=0, over loopback TCP"
                           if tcp else "")
          + "; load average after the run: %.2f %.2f %.2f)" % os.getloadavg())


def _split_p2p(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in rows if not r.get("p2p")], [r for r in rows if r.get("p2p")]


def print_table(title: str, world: int, rows: list[dict]) -> None:
    f = 2 * (world - 1) / world
    print(f"\n{title}")
    print(f"{'size':>8} | {'native us':>10} {'algbw':>7} {'busbw':>7} | {'gloo us':>10} {'algbw':>7} "
          f"{'busbw':>7} | {'speedup':>7}")
    for r in rows:
        nb = r["bytes"]
        tn, tg = r["native"], r["gloo"]
        an, ag = nb / tn / 1e9, nb / tg / 1e9
        print(f"{_fmt_size(nb):>8} | {tn * 1e6:10.1f} {an:7.2f} {an * f:7.2f} | {tg * 1e6:10.1f} "
              f"{ag:7.2f} {ag * f:7.2f} | {tg / tn:6.2f}x")
    print("(algbw, busbw in GB/s; busbw = algbw x 2(n-1)/n; speedup = gloo time / native time; "
          "load average after the run: %.2f %.2f %.2f)" % os.getloadavg())


# ------------------------------------------------------------ namespaces
NS = ("shoalbench0", "shoalbench1")

# A rank of the Ray case: an actor pinned to one node; shoal's group forms through the
# cluster's key-value store (advertising the node IP), Gloo's over the same veth.
_RAY_DRIVER = """
import importlib.util

@shoal.remote(num_cpus=1)
class Rank:
    def run(self, rank, sizes, quick, gloo, ifname):
        os.environ.update(GLOO_SOCKET_IFNAME=ifname, OMP_NUM_THREADS="1")
        import torch
        torch.set_num_threads(1)
        import torch.distributed as dist
        from shoal import collective
        spec = importlib.util.spec_from_file_location("shoal_bench_collective", {bench!r})
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        comm = collective.init_group(rank, 2, shoal.get_kv_store(), backend="native",
                                     name="bench", timeout=120)
        dist.init_process_group("gloo", init_method="tcp://" + gloo, rank=rank, world_size=2)
        rows = bench.time_allreduce(comm, dist, rank, sizes, quick)
        info = [len(comm.topology.hosts), comm.mesh.address[0]]
        comm.destroy()
        dist.destroy_process_group()
        return rows, info

ranks = [Rank.options(resources={{"head": 1}}).remote(), Rank.options(resources={{"worker": 1}}).remote()]
out = shoal.get([r.run.remote(i, {sizes!r}, {quick!r}, {gloo!r}, {ifnames!r}[i])
                 for i, r in enumerate(ranks)], timeout=1800)
emit({{"rows": out[0][0], "info": [o[1] for o in out]}})
"""


def ray_cross_node(sizes, quick) -> None:
    """Allreduce between two actors on the two nodes of a Ray cluster in two namespaces."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "multinode"))
    from _netns_ray import RayCluster, namespaces_unavailable
    why = namespaces_unavailable()
    if why:
        print(f"\nRay across namespaces: skipped ({why})")
        return
    cluster = RayCluster()
    try:
        cluster.make_network()
        cluster.start_head()
        cluster.start_worker()
        got = cluster.run(_RAY_DRIVER.format(
            bench=os.path.abspath(__file__), sizes=sizes, quick=quick,
            gloo=f"{cluster.head_ip}:29733", ifnames=list(cluster.veth)), timeout=1800)
    finally:
        cluster.close()
    hosts, addrs = got["info"][0][0], [i[1] for i in got["info"]]
    print_table(f"allreduce float32, 2 actors on the 2 nodes of a Ray cluster in 2 network "
                f"namespaces ({hosts} hosts; native: TCP over veth, listening on {addrs})", 2,
                got["rows"])


def _sh(*cmd) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_namespaces() -> str | None:
    """Two namespaces joined by a veth pair (10.77.9.1 <-> 10.77.9.2); None or why not."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2"
    delete_namespaces()
    try:
        for ns in NS:
            _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", "sbveth0", "type", "veth", "peer", "name", "sbveth1")
        for i, ns in enumerate(NS):
            _sh("ip", "link", "set", f"sbveth{i}", "netns", ns)
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.77.9.{i + 1}/24", "dev", f"sbveth{i}")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", f"sbveth{i}", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        delete_namespaces()
        return f"could not create namespaces: {e.stderr.strip() if e.stderr else e}"
    return None


def delete_namespaces() -> None:
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run: sizes up to 16 MB, fewer iterations")
    ap.add_argument("--worlds", default="2,4", help="world sizes on this host ('' for none)")
    ap.add_argument("--min-mb", type=float, default=0, help="skip buffers smaller than this")
    ap.add_argument("--max-mb", type=float, default=None, help="skip buffers larger than this")
    ap.add_argument("--no-netns", action="store_true")
    ap.add_argument("--only-ray", action="store_true",
                    help="only the Ray case: 2 actors on 2 nodes of a Ray cluster in namespaces")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int)
    ap.add_argument("--world", type=int)
    ap.add_argument("--master")
    ap.add_argument("--secret")
    ap.add_argument("--gloo-port", type=int)
    ap.add_argument("--sizes")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    top = (16 << 20) if args.quick else (256 << 20)
    sizes, s = [], 4 << 10
    while s <= top:
        if s >= args.min_mb * (1 << 20) and (args.max_mb is None or s <= args.max_mb * (1 << 20)):
            sizes.append(s)
        s *= 4 if args.quick else 2
    print(f"numpy memcpy bandwidth (256 MB): {memcpy_bandwidth():.2f} GB/s; {os.cpu_count()} CPUs; "
          "load average %.2f %.2f %.2f" % os.getloadavg())
    if args.only_ray:
        ray_cross_node([x for x in sizes if x <= (64 << 20)], args.quick)
        return
    for world in (int(w) for w in args.worlds.split(",") if w):
        port = _free_port()
        rows, p2p = _split_p2p(_launch(world, f"127.0.0.1:{port}", sizes, args.quick,
                                       env=lambda r: {"GLOO_SOCKET_IFNAME": "lo"}))
        print_table(f"allreduce float32, {world} ranks on this host (native: shared memory)", world, rows)
        if p2p:
            print_p2p_table("send/recv float32, 2 ranks on this host (native: a shared-memory ring)", p2p)
    if args.no_netns:
        return
    why = make_namespaces()
    if why:
        print(f"\nacross namespaces: skipped ({why})")
        return
    try:
        ns_sizes = [x for x in sizes if x <= (64 << 20)]
        rows, p2p = _split_p2p(_launch(2, "10.77.9.1:29730", ns_sizes, args.quick,
                                       prefix=lambda r: ["ip", "netns", "exec", NS[r]],
                                       env=lambda r: {"GLOO_SOCKET_IFNAME": f"sbveth{r}"}))
        print_table("allreduce float32, 2 ranks in 2 network namespaces (native: TCP over veth)", 2, rows)
        print_p2p_table("send/recv float32, 2 ranks in 2 network namespaces (TCP over veth)", p2p)
    finally:
        delete_namespaces()
    ray_cross_node(ns_sizes, args.quick)


if __name__ == "__main__":
    main()
