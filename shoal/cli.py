"""The ``shoal`` command line.

    shoal --version
    shoal info                    the embedded cluster's resources
    shoal launch -n 2 train.py    run a script on N processes (torchrun's job)
    shoal launch -np 2 python train.py   the same in horovodrun's / mpirun's form (any command)
    shoal serve run module:app    serve an application in the foreground (Ctrl-C drains)
    shoal serve status            applications, deployments and replicas of running serves
    shoal status                  a running session: nodes, resources, tasks, actors, runs
    shoal logs [--worker ID | --actor NAME] [--follow]   the workers' stdout and stderr
    shoal dashboard               the dashboards' URLs; --serve starts a cluster with one
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


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


def _fetch(session: dict, path: str):
    """GET ``path`` from the session's dashboard API with its token."""
    import urllib.request
    dash = session["dashboard"]
    req = urllib.request.Request(dash["url"] + path,
                                 headers={"Authorization": f"Bearer {dash['token']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _gib(v) -> str:
    return f"{(v or 0) / 2**30:.2f} GiB"


def _status(args) -> int:
    from shoal.core.sessions import find_session, read_state_snapshot, worker_logs
    try:
        sess = find_session(args.session)
    except LookupError as e:
        print(f"shoal status: {e}", file=sys.stderr)
        return 1
    snap = None
    if sess.get("dashboard"):
        try:
            snap = {"summary": _fetch(sess, "/api/summary"),
                    "actors": _fetch(sess, "/api/actors?limit=50"),
                    "failed_tasks": _fetch(sess, "/api/tasks?state=FAILED&limit=5")}
        except OSError as e:
            print(f"shoal status: the dashboard of session {sess['session']} at "
                  f"{sess['dashboard']['url']} did not answer ({e}); showing its last "
                  "snapshot", file=sys.stderr)
    if snap is None:
        snap = read_state_snapshot(sess["dir"])
        if snap is None:
            workers = worker_logs(sess["dir"])
            print(f"session {sess['session']} (pid {sess['pid']}, {' '.join(sess.get('argv', []))})")
            print(f"  workers started: {len(workers)}; logs in {sess['dir']}/logs (shoal logs)")
            print("  it writes no state snapshot (SHOAL_STATE_SNAPSHOT_S=0 or not yet): start "
                  "it with shoal.init(dashboard=True) for its live state")
            return 0
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    _print_status(snap["summary"], snap["actors"], snap["failed_tasks"])
    if "time" in snap:
        print(f"(the driver's snapshot of {time.time() - snap['time']:.1f} s ago; "
              "SHOAL_STATE_SNAPSHOT_S sets how often it writes one)")
    if sess.get("dashboard"):
        print(f"dashboard: {sess['dashboard']['url']}/?token={sess['dashboard']['token']}")
    return 0


def _print_status(s: dict, actors: list, failed: list) -> None:
    tot, av, store = s["resources_total"], s["resources_available"], s.get("object_store", {})
    print(f"session {s.get('session', '?')} ({s['backend']} backend), up "
          f"{s.get('uptime_s', 0):.0f} s, {s['nodes']} node(s)")
    print("resources (used / total):")
    for k in sorted(tot):
        used = tot[k] - av.get(k, 0.0)
        if "memory" in k:
            print(f"  {k:22s} {_gib(used)} / {_gib(tot[k])}")
        else:
            print(f"  {k:22s} {used:g} / {tot[k]:g}")
    if store:
        print(f"object store: {_gib(store['used_bytes'])} of {_gib(store['capacity_bytes'])} in "
              f"{store['objects']} objects; spilled {_gib(store['spilled_bytes'])}")
    print("tasks:  " + "  ".join(f"{k.lower()} {v}" for k, v in s["tasks"].items()))
    print("actors: " + ("  ".join(f"{k.lower()} {v}" for k, v in s["actors"].items()) or "none"))
    for a in actors:
        if a["state"] == "DEAD":
            cause = (a.get("death_cause") or "").splitlines()[0:1]
            print(f"  dead actor {a['class_name']} {a.get('name') or ''}: {cause[0] if cause else ''}")
    for t in failed:
        print(f"  failed task {t['name']} ({t['task_id']}): {t.get('error_type')}: "
              f"{(t.get('error_message') or '').splitlines()[0] if t.get('error_message') else ''}")
    for r in s.get("runs", []):
        last = "  ".join(f"{k}={v:.4g}" for k, v in r["last"].items()
                        if k != "time" and v is not None)
        print(f"{r['kind']} run {r['name']}: {r['status']}, {r['reports']} reports  {last}")


def _logs(args) -> int:
    import time

    from shoal.core.sessions import find_session, follow_logs, select_logs
    try:
        sess = find_session(args.session)
        select_logs(sess["dir"], args.worker, args.actor)
    except LookupError as e:
        print(f"shoal logs: {e}", file=sys.stderr)
        return 1

    def write(row, text):
        sys.stdout.write(text)
        sys.stdout.flush()

    def select():
        try:
            return select_logs(sess["dir"], args.worker, args.actor)
        except LookupError:
            return []
    until = None if args.follow else time.monotonic()
    if args.follow and args.follow_seconds:
        until = time.monotonic() + args.follow_seconds
    try:
        follow_logs(select, write, tail=args.tail, until=until,
                    stop=lambda: not os.path.isdir(sess["dir"]))
    except KeyboardInterrupt:
        pass
    return 0


def _dashboard(args) -> int:
    from shoal.core.sessions import find_sessions
    if args.serve or args.address:
        import time

        import shoal
        shoal.init(address=args.address, num_cpus=args.num_cpus, dashboard=True,
                   dashboard_port=args.port)
        print("serving until Ctrl-C", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            shoal.shutdown()
        return 0
    found = [s for s in find_sessions() if s.get("dashboard")]
    if not found:
        print("no running shoal session serves a dashboard; start the driver with "
              "shoal.init(dashboard=True) (or SHOAL_DASHBOARD=1), or run "
              "`shoal dashboard --serve` for a cluster of its own", file=sys.stderr)
        return 1
    for s in found:
        print(f"{s['session']} (pid {s['pid']}): {s['dashboard']['url']}/?token="
              f"{s['dashboard']['token']}")
    return 0


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
    p = sub.add_parser("status", help="what a running session is doing (its dashboard's state)")
    p.add_argument("--session", help="the session id (or its start); default the newest")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("logs", help="the stdout and stderr of a running session's workers")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--worker", help="a worker's id or pid")
    g.add_argument("--actor", help="an actor's name, class name or id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing what comes")
    p.add_argument("--follow-seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tail", type=int, default=1 << 20, help="bytes of each log to start with")
    p.add_argument("--session", help="the session id (or its start); default the newest")
    p = sub.add_parser("dashboard", help="the dashboards of running sessions; --serve for one "
                                         "of its own")
    p.add_argument("--serve", action="store_true", help="start a cluster with a dashboard")
    p.add_argument("--address", help="serve the dashboard of this Ray cluster (e.g. auto)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "info":
        return _info(args)
    if args.cmd == "status":
        return _status(args)
    if args.cmd == "logs":
        return _logs(args)
    if args.cmd == "dashboard":
        return _dashboard(args)
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
