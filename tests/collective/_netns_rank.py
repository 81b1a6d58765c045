"""One rank of a multi-host test, run inside a network namespace (see test_multihost)."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int)
    ap.add_argument("--world", type=int)
    ap.add_argument("--store")
    ap.add_argument("--secret")
    ap.add_argument("--out")
    a = ap.parse_args()
    import _battery as B
    B.TOLERANT = True
    from shoal import collective
    from shoal.core.kv import TCPStore
    host, port = a.store.split(":")
    store = TCPStore(host, int(port), secret=bytes.fromhex(a.secret), is_server=a.rank == 0, timeout=60)
    cfg = collective.NativeConfig(segment_bytes=4096, small_bytes=256, tcp_small_bytes=256)
    comm = collective.init_group(a.rank, a.world, store, name="mh", timeout=60, config=cfg)
    # NumPy only: a rank that imports torch takes seconds to start on a loaded machine
    res = B.allreduce_cases(comm, (0, 13, 3001), dtypes=["int32", "int64", "float16", "float32", "float64",
                                                        "uint8"], with_torch=False)
    res.update(B.ops_cases(comm, with_torch=False))
    res["hosts"] = len(comm.topology.hosts)
    res["shm"] = comm.shm is not None
    comm.barrier()
    comm.destroy()
    with open(a.out, "w") as f:
        json.dump(res, f)
    store.close()


if __name__ == "__main__":
    main()
