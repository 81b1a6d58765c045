# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: demo test bench setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/tour.py
	$(BIN)/python examples/train_digits.py
	$(BIN)/python examples/ml_pipeline.py
	$(BIN)/python examples/serve_digits.py

# The dashboard's browser tests drive headless Chromium (Debian's chromium and
# chromium-driver), installed here when missing and run as root.
# TensorFlow (the `tf` extra, kept out of `all` for its size) is added after the
# main suite, for tests/tf only, with tf-keras (Keras 2) of the same minor version:
# --no-deps, as it names the `tensorflow` package, a second copy of tensorflow-cpu.
test: $(STAMP)
	{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
		{ [ "$$(id -u)" = 0 ] && { apt-get update -q || true; } && apt-get install -y -q chromium chromium-driver; } || \
		echo "the dashboard's browser tests need chromium and chromium-driver (apt-get install chromium chromium-driver); they will skip"
	$(BIN)/python -m pytest -q --ignore=tests/tf
	$(BIN)/python -m pip install -q -e '.[tf]'
	V=$$($(BIN)/python -m pip show tensorflow-cpu | sed -n 's/^Version: //p' | cut -d. -f1,2); \
		$(BIN)/python -m pip install -q --no-deps "tf-keras~=$$V.0" || \
		echo "no tf-keras for TensorFlow $$V: the Keras 2 tests will skip"
	$(BIN)/python -m pytest -q tests/tf

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/core.py
	$(BIN)/python benchmarks/dashboard.py --rounds 4
	$(BIN)/python benchmarks/collective.py --quick
	$(BIN)/python benchmarks/train.py --quick
	$(BIN)/python benchmarks/ml.py --quick
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/parallel.py --quick
	$(BIN)/python benchmarks/elastic.py --rounds 1
	$(BIN)/python benchmarks/tune.py --quick
	$(BIN)/python benchmarks/rl.py --quick
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk; } || \
		echo "benchmarks/serve.py needs wrk (apt-get install wrk); skipping it"
	if command -v wrk >/dev/null; then $(BIN)/python benchmarks/serve.py --quick; fi

# The documentation site (docs/, mkdocs.yml) into site/; fails on any warning.
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info
