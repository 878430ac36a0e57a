# One-command set-up and runs. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow lint demo bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned, so no dependency pulls a newer (CUDA) build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	# the tracking tests' library, without the GUI opencv-python it declares (rtdet has the headless one;
	# both install a cv2 package, and the GUI one needs libGL): its other dependencies are in [dev]
	$(BIN)/pip install --no-deps "trackers>=2.6"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP) chromium
	$(BIN)/ruff check rtdet tests benchmarks
	$(BIN)/pytest -q

# Headless Chromium opens the HTML report in tests/engine/test_report.py (the test skips without it).
# Best effort: Debian's package when we are root with apt-get; never fails the build.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "installing Debian's chromium for the HTML report test (once)" && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 ; } || \
	  echo "chromium not installed: the HTML report test will be skipped"

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check rtdet tests benchmarks

demo: $(STAMP)
	$(BIN)/rtdet demo

clean:
	rm -rf $(VENV) runs .pytest_cache
