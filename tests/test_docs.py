"""Every ```python block in README.md and docs/**/*.md runs, so an example that breaks fails CI.

The convention (shared by everyone who writes docs):

- a file's python blocks run in order, in one fresh Python process, sharing one namespace,
  with a temporary directory as the working directory;
- a hidden setup block is an HTML comment whose first line is ``<!-- test-setup`` and whose
  body, up to ``-->``, is Python run at that position (to make data a block reads);
- a block that needs what this machine cannot have (a remote cluster, a GPU) is preceded,
  on the line before its fence, by ``<!-- no-run: <reason> -->`` and is skipped.

A failure names the file and the line of the block's fence, with the traceback (whose line
numbers are the markdown file's). ``SHOAL_DOCS_TIMEOUT`` (seconds, default 300) bounds a
file's run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = float(os.environ.get("SHOAL_DOCS_TIMEOUT", "300"))
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(\S.*?)\s*-->\s*$")
SETUP_START = re.compile(r"^\s*<!--\s*test-setup\s*$")


@dataclass
class Block:
    line: int        # 1-based line of the fence (or of the setup comment's first line)
    code: str        # the block's text; its first line is file line ``line + 1``
    kind: str        # "python" or "setup"


def parse_markdown(text: str, name: str = "<markdown>") -> tuple[list[Block], list[tuple[int, str]]]:
    """The blocks to run, in order, and the skipped ones as (line, reason)."""
    lines = text.splitlines()
    blocks, skipped = [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            indent, marker, lang = fence.groups()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].strip().startswith(marker):
                body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
                j += 1
            if j == len(lines):
                raise ValueError(f"{name}:{i + 1}: a code fence is never closed")
            if lang.lower() in ("python", "py"):
                reason = NO_RUN.match(lines[i - 1]) if i else None
                if reason:
                    skipped.append((i + 1, reason.group(1)))
                else:
                    blocks.append(Block(i + 1, "\n".join(body) + "\n", "python"))
            i = j + 1
            continue
        if SETUP_START.match(line):
            body, j = [], i + 1
            while j < len(lines) and "-->" not in lines[j]:
                body.append(lines[j])
                j += 1
            if j == len(lines):
                raise ValueError(f"{name}:{i + 1}: a <!-- test-setup comment is never closed by -->")
            before = lines[j].split("-->", 1)[0]
            if before.strip():
                body.append(before)
            blocks.append(Block(i + 1, "\n".join(body) + "\n", "setup"))
            i = j + 1
            continue
        if "no-run:" in line and "<!--" in line and not NO_RUN.match(line):
            raise ValueError(f"{name}:{i + 1}: a no-run comment needs a reason: <!-- no-run: why -->")
        i += 1
    return blocks, skipped


# Runs in the child: each block compiled under the markdown file's name with its own line
# numbers, so a traceback points into the file.
RUNNER = r"""
import json, linecache, sys, traceback
spec = json.load(sys.stdin)
name, source = spec["name"], spec["source"]
linecache.cache[name] = (len(source), None, source.splitlines(True), name)
ns = {"__name__": "__main__"}
status = 0
try:
    for block in spec["blocks"]:
        print(f"@@block {block['line']}", file=sys.stderr, flush=True)
        code = "\n" * block["line"] + block["code"]
        try:
            exec(compile(code, name, "exec"), ns)
        except BaseException:
            kind = "hidden setup block" if block["kind"] == "setup" else "python block"
            print(f"@@failed {block['line']} {kind}", file=sys.stderr)
            traceback.print_exc()
            status = 1
            break
finally:
    shoal = sys.modules.get("shoal")
    if shoal is not None and getattr(shoal, "is_initialized", lambda: False)():
        shoal.shutdown()
sys.exit(status)
"""


def run_markdown(path: Path, timeout: float = TIMEOUT_S) -> tuple[int, str, str]:
    """Run a markdown file's blocks in a fresh process; returns (returncode, stdout, stderr)."""
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    text = path.read_text()
    blocks, _ = parse_markdown(text, name)
    spec = json.dumps({"name": name, "source": text,
                       "blocks": [{"line": b.line, "code": b.code, "kind": b.kind} for b in blocks]})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with tempfile.TemporaryDirectory(prefix="shoal-docs-") as cwd:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER], cwd=cwd, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(spec, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # the blocks' worker processes too
            out, err = proc.communicate()
            return -1, out, err
    return proc.returncode, out, err


def failure_message(path_name: str, returncode: int, out: str, err: str, timeout: float) -> str:
    started = re.findall(r"^@@block (\d+)$", err, flags=re.M)
    failed = re.search(r"^@@failed (\d+) (.*)$", err, flags=re.M)
    if returncode == -1:
        where = f"the python block at line {started[-1]}" if started else "before any block"
        head = f"{path_name}: timed out after {timeout:g} s in {where}"
    elif failed:
        head = f"{path_name}: the {failed.group(2)} at line {failed.group(1)} failed"
    else:
        head = f"{path_name}: the run exited with status {returncode}"
    tail = re.sub(r"^@@(block|failed) .*\n", "", err, flags=re.M)
    return f"{head}\n{tail[-6000:]}\n--- stdout ---\n{out[-2000:]}"


def doc_files() -> list[Path]:
    """README.md and docs/**/*.md that hold a python block (parsed in the test, so that a
    malformed file fails as itself rather than breaking collection)."""
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.exists() and re.search(r"^\s*(`{3,}|~{3,})\s*py", f.read_text(), re.M)]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(path):
    name = str(path.relative_to(ROOT))
    blocks, skipped = parse_markdown(path.read_text(), name)
    if not any(b.kind == "python" for b in blocks):
        pytest.skip(f"{name}: every python block is marked no-run ({len(skipped)})")
    rc, out, err = run_markdown(path)
    if rc != 0:
        pytest.fail(failure_message(name, rc, out, err, TIMEOUT_S), pytrace=False)


# ---------------------------------------------------------------- the collector itself

SAMPLE = """# Title

<!-- test-setup
value = 41
-->

```python
value += 1
```

```bash
echo not python
```

<!-- no-run: needs a GPU -->
```python
raise SystemExit("never runs")
```

```python
assert value == 42
```
"""


def test_parse_finds_setup_blocks_and_skips_no_run():
    blocks, skipped = parse_markdown(SAMPLE)
    assert [(b.kind, b.line) for b in blocks] == [("setup", 3), ("python", 7), ("python", 20)]
    assert blocks[0].code.strip() == "value = 41"
    assert skipped == [(16, "needs a GPU")]


def test_parse_rejects_a_no_run_without_reason_and_an_unclosed_fence():
    with pytest.raises(ValueError, match="needs a reason"):
        parse_markdown("<!-- no-run: -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        parse_markdown("```python\npass\n")


def test_blocks_share_a_namespace_and_run_in_a_temp_dir(tmp_path):
    doc = tmp_path / "ok.md"
    doc.write_text(SAMPLE + "\n```python\nimport os\nassert os.getcwd() != %r\n```\n" % str(ROOT))
    rc, out, err = run_markdown(doc, timeout=60)
    assert rc == 0, err


def test_a_failing_block_is_named_by_file_and_line(tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text("intro\n\n```python\nx = 1\n```\n\ntext\n\n```python\ny = 2\nundefined_name\n```\n")
    rc, out, err = run_markdown(doc, timeout=60)
    message = failure_message("bad.md", rc, out, err, 60)
    assert rc == 1
    assert "the python block at line 9 failed" in message
    assert "line 11" in message and "NameError" in message   # the traceback uses the file's lines


def test_a_block_that_hangs_is_stopped_and_named(tmp_path):
    doc = tmp_path / "slow.md"
    doc.write_text("```python\nimport time\ntime.sleep(60)\n```\n")
    rc, out, err = run_markdown(doc, timeout=2)
    assert rc == -1
    assert "timed out after 2 s in the python block at line 1" in failure_message("slow.md", rc, out, err, 2)
