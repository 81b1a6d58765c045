"""The ``shoal`` command line.

    shoal --version
    shoal info                    the embedded cluster's resources
    shoal launch -n 2 train.py    run a script on N processes (torchrun's job)
    shoal launch -np 2 python train.py   the same in horovodrun's / mpirun's form (any command)
    shoal serve run module:app    serve an application in the foreground (Ctrl-C drains)
    shoal serve status            applications, deployments and replicas of running serves
"""
from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    import shoal
    shoal.init(num_cpus=args.num_cpus)
    try:
        total = shoal.cluster_resources()
        nodes = shoal.nodes()
        info = {"version": shoal.__version__, "backend": "local", "nodes": len(nodes),
                "resources": total}
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"shoal {shoal.__version__} — embedded cluster (local backend)")
        print(f"  nodes: {len(nodes)}")
        for k, v in sorted(total.items()):
            if k in ("memory", "object_store_memory"):
                print(f"  {k:20s} {v / 2**30:8.2f} GiB")
            else:
                print(f"  {k:20s} {v:8g}")
        return 0
    finally:
        shoal.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "launch":
        from shoal.launch import main as launch_main
        return launch_main(argv[1:])
    if argv and argv[0] == "serve":
        from shoal.serve.cli import main as serve_main
        return serve_main(argv[1:])
    from shoal import __version__
    ap = argparse.ArgumentParser(prog="shoal", description="shoal: one framework for distributed ML")
    ap.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("info", help="start the embedded cluster and print its resources")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--json", action="store_true")
    sub.add_parser("launch", help="run a script or command on N processes: shoal launch -n N "
                                  "script.py ARGS, or -np N [-H host:slots,...] python script.py")
    sub.add_parser("serve", help="shoal serve run module:app | shoal serve status")
    args = ap.parse_args(argv)
    if args.cmd == "info":
        return _info(args)
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
