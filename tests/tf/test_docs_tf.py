"""docs/guide/tensorflow.md's python blocks run here, where TensorFlow is installed (the
default test run skips them: they are marked no-run for lack of the tf extra)."""
import os
import sys

import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = os.path.join(ROOT, "docs", "guide", "tensorflow.md")
MARK = "<!-- no-run: needs the tf extra"


def test_tensorflow_guide_blocks_run(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import test_docs
    text = open(PAGE).read()
    assert text.count(MARK) >= 4
    page = tmp_path / "tensorflow.md"
    page.write_text("\n".join("" if ln.startswith(MARK) else ln for ln in text.splitlines()))
    blocks, skipped = test_docs.parse_markdown(page.read_text(), "tensorflow.md")
    assert not skipped and len(blocks) >= 4
    code, out, err = test_docs.run_markdown(page, timeout=500)
    assert code == 0, test_docs.failure_message("docs/guide/tensorflow.md", code, out, err, 500)
