"""``shoal serve run module:app`` and ``shoal serve status``.

``run`` imports the application (a bound deployment, a Deployment, or a
function returning one), serves it in the foreground and drains on Ctrl-C
or SIGTERM. While it runs it writes its status, read-only, to a file in a
directory only this user can read; ``status`` prints those files. No
control command is taken from outside: the control plane stays inside the
authenticated cluster of the ``run`` process.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import threading


def status_dir() -> str:
    """Where running ``shoal serve run`` processes write their status."""
    return os.path.join(tempfile.gettempdir(), f"shoal-serve-{os.getuid()}")


def load_target(spec: str):
    """The application named by ``module:attribute`` (``module.path:app``)."""
    if ":" not in spec:
        raise ValueError(f"{spec!r} is not module:attribute; e.g. shoal serve run my_app:app")
    mod_name, attr = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(mod_name)
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {mod_name} has no attribute {attr!r}") from None
    from shoal.serve import Application, Deployment
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application) and callable(target):
        target = target()
    if not isinstance(target, Application):
        raise TypeError(f"{spec} is a {type(target).__name__}; it must be a bound deployment "
                        "(MyDeployment.bind(...)), a Deployment, or a function returning one")
    return target


def _run(args) -> int:
    import shoal
    from shoal import serve
    target = load_target(args.target)
    shoal.init(num_cpus=args.num_cpus)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    path = None
    try:
        serve.run(target, name=args.name, route_prefix=args.route_prefix, host=args.host,
                  port=args.port)
        st = serve.status()
        print(f"shoal serve: application {args.name!r} at http://{st['proxy']['host']}:"
              f"{st['proxy']['port']}{args.route_prefix} (Ctrl-C drains and stops)", flush=True)
        d = status_dir()
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        path = os.path.join(d, f"{os.getpid()}.json")
        while not stop.is_set():
            _write_status(path, serve.status())
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        print("shoal serve: draining...", flush=True)
        serve.shutdown()
        shoal.shutdown()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
    return 0


def _write_status(path: str, st: dict) -> None:
    st = dict(st, pid=os.getpid())
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(st, f)
    os.replace(tmp, path)


def _status(args) -> int:
    d = status_dir()
    found = []
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if not name.endswith(".json"):
            continue
        pid = int(name[:-5])
        try:
            os.kill(pid, 0)
        except OSError:   # that run process is gone: its file is stale
            continue
        with open(os.path.join(d, name)) as f:
            found.append(json.load(f))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no `shoal serve run` is running for this user")
        return 1
    for st in found:
        p = st["proxy"]
        print(f"serve (pid {st['pid']})" + (f" at http://{p['host']}:{p['port']}" if p else ""))
        for app, a in st["applications"].items():
            print(f"  application {app}  route_prefix={a['route_prefix']}  ingress={a['ingress']}")
            for dep, info in a["deployments"].items():
                states = [r["state"] for r in info["replicas"]]
                print(f"    {dep}: {info['status']}  {states.count('running')}/"
                      f"{info['target_replicas']} replicas running")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``shoal serve ...``."""
    ap = argparse.ArgumentParser(prog="shoal serve", description="serve applications")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="serve module:app in the foreground (Ctrl-C drains)")
    p.add_argument("target", help="module:attribute, a bound deployment")
    p.add_argument("--name", default="default")
    p.add_argument("--route-prefix", default="/")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-cpus", type=int, default=None)
    p = sub.add_parser("status", help="applications, deployments and replicas of running serves")
    p.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    return _run(args) if args.cmd == "run" else _status(args)
