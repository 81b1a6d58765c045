"""``runtime_env`` on the local backend: env_vars, working_dir and py_modules.

A working_dir or py_modules directory is copied once (per content) into
the session's directory, so every worker sees the files as they were at
submission and the user may change them afterwards, as Ray's upload does.
A task runs inside its environment and the worker is put back afterwards
(variables, cwd, sys.path, modules imported from the shipped files); an
actor's process is started inside it.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import inspect
import os
import shutil
import sys
import types

from shoal.exceptions import RuntimeEnvSetupError

_SUPPORTED = {"env_vars", "working_dir", "py_modules", "excludes", "config"}
_RAY_ONLY = {"pip", "conda", "uv", "container", "image_uri", "java_jars", "nsight"}


def prepare(runtime_env: dict, resource_dir: str, what: str) -> dict:
    """Check ``runtime_env`` and ship its files; returns {"env_vars", "cwd", "paths"}."""
    if not isinstance(runtime_env, dict):
        raise RuntimeEnvSetupError(f"{what}: runtime_env must be a dict, got "
                                   f"{type(runtime_env).__name__}")
    for key in runtime_env:
        if key in _RAY_ONLY:
            raise RuntimeEnvSetupError(
                f"{what}: runtime_env[{key!r}] is not supported on the embedded backend "
                f"(it installs packages per task); install them in this environment, or use "
                f"backend='ray'")
        if key not in _SUPPORTED:
            raise RuntimeEnvSetupError(f"{what}: unknown runtime_env key {key!r}; the embedded "
                                       f"backend takes {sorted(_SUPPORTED)}")
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise RuntimeEnvSetupError(f"{what}: runtime_env['env_vars'] must map str to str, "
                                   f"got {env_vars!r}")
    excludes = list(runtime_env.get("excludes") or [])
    out = {"env_vars": dict(env_vars), "cwd": None, "paths": []}
    wd = runtime_env.get("working_dir")
    if wd is not None:
        out["cwd"] = _ship_dir(_local_dir(wd, "working_dir", what), resource_dir, excludes)
        out["paths"].append(out["cwd"])
    for mod in runtime_env.get("py_modules") or []:
        out["paths"].append(_ship_module(mod, resource_dir, excludes, what))
    return out


def _local_dir(path, key: str, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise RuntimeEnvSetupError(f"{what}: runtime_env[{key!r}] must be a path, got {path!r}")
    path = os.fspath(path)
    if "://" in path:
        raise RuntimeEnvSetupError(f"{what}: runtime_env[{key!r}]={path!r} is a remote URI; the "
                                   "embedded backend takes local directories (or use backend='ray')")
    if not os.path.isdir(path):
        raise RuntimeEnvSetupError(f"{what}: runtime_env[{key!r}]={path!r} is not a directory")
    return os.path.abspath(path)


def _ship_module(mod, resource_dir: str, excludes: list, what: str) -> str:
    """Copy a package directory, a .py file or an imported module; returns the dir for sys.path."""
    if isinstance(mod, types.ModuleType):
        f = getattr(mod, "__file__", None)
        if f is None:
            raise RuntimeEnvSetupError(f"{what}: py_modules entry {mod.__name__} has no file")
        mod = os.path.dirname(f) if os.path.basename(f) == "__init__.py" else f
    if not isinstance(mod, (str, os.PathLike)):
        raise RuntimeEnvSetupError(f"{what}: py_modules entries are paths or modules, "
                                   f"got {mod!r}")
    mod = os.path.abspath(os.fspath(mod))
    if "://" in mod or not (os.path.isdir(mod) or (os.path.isfile(mod) and mod.endswith(".py"))):
        raise RuntimeEnvSetupError(f"{what}: py_modules entry {mod!r} is not a local package "
                                   "directory or .py file")
    # The parent directory goes on sys.path, holding only this module.
    digest = _digest(mod, excludes)
    parent = os.path.join(resource_dir, f"py_modules_{digest}")
    dst = os.path.join(parent, os.path.basename(mod))
    if not os.path.exists(dst):
        tmp = parent + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        if os.path.isdir(mod):
            shutil.copytree(mod, os.path.join(tmp, os.path.basename(mod)),
                            ignore=_ignore(mod, excludes))
        else:
            shutil.copy2(mod, os.path.join(tmp, os.path.basename(mod)))
        _publish(tmp, parent)
    return parent


def _ship_dir(src: str, resource_dir: str, excludes: list) -> str:
    dst = os.path.join(resource_dir, f"working_dir_{_digest(src, excludes)}")
    if not os.path.exists(dst):
        tmp = dst + f".tmp{os.getpid()}"
        shutil.copytree(src, tmp, ignore=_ignore(src, excludes), dirs_exist_ok=True)
        _publish(tmp, dst)
    return dst


def _publish(tmp: str, dst: str) -> None:
    try:
        os.rename(tmp, dst)          # atomic: a concurrent copy of the same content may win
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _ignore(root: str, excludes: list):
    def ignore(d, names):
        rel = os.path.relpath(d, root)
        out = {"__pycache__"}
        for n in names:
            p = os.path.normpath(os.path.join(rel, n))
            if any(fnmatch.fnmatch(n, pat) or fnmatch.fnmatch(p, pat) for pat in excludes):
                out.add(n)
        return out
    return ignore


def _digest(path: str, excludes: list) -> str:
    """A hash of the files' names, sizes and modification times (content changes change it)."""
    h = hashlib.sha256(path.encode())
    if os.path.isfile(path):
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
    ign = _ignore(path, excludes)
    for d, dirs, files in os.walk(path):
        skip = ign(d, dirs + files)
        dirs[:] = sorted(x for x in dirs if x not in skip)
        for f in sorted(files):
            if f in skip:
                continue
            st = os.stat(os.path.join(d, f))
            h.update(f"{os.path.relpath(os.path.join(d, f), path)}:{st.st_size}:"
                     f"{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def process_env(env: dict, prepared: dict) -> None:
    """Set an actor process's environment (``env``, for Popen) from a prepared runtime_env."""
    env.update(prepared["env_vars"])
    if prepared["paths"]:
        env["PYTHONPATH"] = os.pathsep.join(prepared["paths"] + [env.get("PYTHONPATH", "")])


@contextlib.contextmanager
def applied(prepared: dict):
    """Run the body inside the environment; put the process back afterwards."""
    saved_env = {k: os.environ.get(k) for k in prepared["env_vars"]}
    os.environ.update(prepared["env_vars"])
    cwd = os.getcwd() if prepared["cwd"] else None
    if cwd is not None:
        os.chdir(prepared["cwd"])
    paths = prepared["paths"]
    sys.path[:0] = paths
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cwd is not None:
            os.chdir(cwd)
        for p in paths:
            try:
                sys.path.remove(p)
            except ValueError:
                pass
        if paths:   # the next task may ship other versions of the same modules
            for name, m in list(sys.modules.items()):
                f = getattr(m, "__file__", None) or ""
                if any(f.startswith(p + os.sep) for p in paths):
                    del sys.modules[name]


class EnvFunction:
    """A task's function that runs inside its runtime_env."""

    def __init__(self, function, prepared: dict):
        self.function = function
        self.prepared = prepared

    def __call__(self, *args, **kwargs):
        with applied(self.prepared):
            result = self.function(*args, **kwargs)
        if inspect.isgenerator(result):
            return _generator_in(result, self.prepared)
        if inspect.iscoroutine(result):
            return _coroutine_in(result, self.prepared)
        return result


def _generator_in(gen, prepared):
    while True:
        with applied(prepared):
            try:
                item = next(gen)
            except StopIteration:
                return
        yield item


async def _coroutine_in(coro, prepared):
    with applied(prepared):
        return await coro
