"""Running shoal sessions as other processes find them: session files and logs.

Each driver of the local backend keeps a private directory (mode 0700) in
the temp dir, ``shoal-<session>-*``, holding ``session.json`` (its pid, and
the dashboard's address and token when one runs) and ``logs/``: every
worker's stdout (``worker-<id>.out``), stderr (``.err``) and who it is
(``.json``: pid, actor class and name), and ``state.json``, the state
``shoal status`` shows, rewritten every ``SHOAL_STATE_SNAPSHOT_S`` seconds
(default 2; 0 turns it off). ``shoal status`` and ``shoal logs`` read them;
the directory goes when the session shuts down, but for ``logs/`` when
``SHOAL_KEEP_LOGS=1``.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import time

SESSION_FILE = "session.json"
STATE_FILE = "state.json"


def write_private_json(path: str, obj) -> None:
    """Write (or replace at once) a JSON file readable by its user only."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def write_session_info(session_dir: str, info: dict) -> None:
    """Write (or replace) the session's ``session.json``, readable by its user only."""
    write_private_json(os.path.join(session_dir, SESSION_FILE), info)


def read_state_snapshot(session_dir: str) -> dict | None:
    """The session's last ``state.json`` (``summary``, ``actors``, ``failed_tasks``,
    ``time`` written), or None when it writes none."""
    try:
        with open(os.path.join(session_dir, STATE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def find_sessions(root: str | None = None) -> list[dict]:
    """The live sessions on this machine (their drivers still run), newest first.

    Each is its ``session.json`` plus ``dir``. ``root`` is where to look
    (default: the temp dir, where ``shoal.init`` puts them).
    """
    out = []
    for path in glob.glob(os.path.join(root or tempfile.gettempdir(), "shoal-*", SESSION_FILE)):
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if _alive(info.get("pid")):
            info["dir"] = os.path.dirname(path)
            out.append(info)
    out.sort(key=lambda s: s.get("start_time", 0), reverse=True)
    return out


def find_session(session: str | None = None, root: str | None = None) -> dict:
    """One live session: the one whose id starts with ``session``, or the newest.

    Raises LookupError naming what was looked for when there is none.
    """
    found = find_sessions(root)
    if session:
        found = [s for s in found if str(s.get("session", "")).startswith(session)]
    if not found:
        raise LookupError(
            "no running shoal session" + (f" with id {session!r}" if session else "")
            + f" on this machine (looked for {root or tempfile.gettempdir()}/shoal-*/"
            f"{SESSION_FILE}); start one with shoal.init() in a Python process")
    return found[0]


def worker_logs(session_dir: str) -> list[dict]:
    """The session's workers as their log notes say: ``worker_id, pid, actor_class,
    actor_name, stdout_file, stderr_file``, oldest first."""
    rows = []
    for meta in glob.glob(os.path.join(session_dir, "logs", "worker-*.json")):
        try:
            with open(meta) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        base = meta[:-len(".json")]
        info["stdout_file"], info["stderr_file"] = base + ".out", base + ".err"
        rows.append(info)
    rows.sort(key=lambda r: int(r["worker_id"]))
    return rows


def select_logs(session_dir: str, worker: str | None = None, actor: str | None = None) -> list[dict]:
    """The workers whose logs ``shoal logs --worker ID`` / ``--actor NAME`` mean.

    ``actor`` matches an actor's name, class name or id. Raises LookupError
    listing what there is when nothing matches.
    """
    rows = worker_logs(session_dir)
    if worker is not None:
        rows = [r for r in rows if r["worker_id"] == str(worker) or str(r.get("pid")) == str(worker)]
    if actor is not None:
        rows = [r for r in rows if actor in (r.get("actor_name"), r.get("actor_class"),
                                             r.get("actor_id"))]
    if not rows and (worker is not None or actor is not None):
        have = ", ".join(sorted({r.get("actor_name") or r.get("actor_class")
                                 for r in worker_logs(session_dir) if r.get("actor_class")}))
        raise LookupError(f"no worker {'with id or pid ' + repr(worker) if worker else ''}"
                          f"{'hosting actor ' + repr(actor) if actor else ''} in this session; "
                          f"actors with logs: {have or 'none'} (see `shoal status`)")
    return rows


def read_log(path: str, offset: int = 0, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """Up to ``max_bytes`` of a log from ``offset`` (negative: that many bytes from
    the end); returns (text, the offset to read on from)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            f.seek(start)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return "", offset if offset >= 0 else 0
    return data.decode(errors="replace"), start + len(data)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def follow_logs(select, write, *, tail: int = 4096, poll_s: float = 0.25,
                stop=lambda: False, until: float | None = None) -> None:
    """Write the logs of the workers ``select()`` returns through ``write(row, text)``
    (the last ``tail`` bytes of each first) and keep writing what they gain, and
    the logs of workers that start later (a restarted actor), until ``stop()``
    is true or ``until`` (a ``time.monotonic()`` deadline) passes."""
    offsets: dict = {}
    first = True
    while True:
        for r in select():
            for key in ("stdout_file", "stderr_file"):
                path = r[key]
                start = offsets.get(path)
                if start is None:   # a log seen first now: its last `tail` bytes, or all if new
                    start = (-tail if tail > 0 else _size(path)) if first else 0
                text, offsets[path] = read_log(path, start)
                if text:
                    write(r, text)
        first = False
        if stop() or (until is not None and time.monotonic() >= until):
            return
        time.sleep(poll_s)
