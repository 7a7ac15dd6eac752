# Two entry points: `make demo` (the main job on the demo corpus) and `make test`.
# The venv is stamped with the lock file's hash: a second run installs nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
LOCK_HASH := $(shell sha256sum requirements.lock setup.py | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONUNBUFFERED := 1

.PHONY: venv demo distill test bench clean

venv: $(STAMP)

$(STAMP):
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	# One pip command for the whole stack: installed in steps, beam drags protobuf to 6 and breaks TF.
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	@touch $@

# A step budget, not a wall-clock one: the same seed then gives the same table on any machine.
demo: venv
	$(VENV)/bin/python -m experiments.run --max_steps=200 --max_minutes=0

# The paper's WaveNet distilled from the default engine on every allowed package's whole tracks (labels unused)
# into runs/distilled-wavenet: prints its teacher agreement on held-out tracks and the time taken; resumes.
distill: venv
	$(VENV)/bin/python -m experiments.distill --audio=demo --output=runs/distilled-wavenet

# The browser test drives headless Chromium: installed here when missing (as root, with apt-get), else it skips.
test: venv
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get) for tests/test_browser.py"; \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
	      || echo "could not install chromium: tests/test_browser.py will skip"; \
	  else \
	    echo "chromium or chromedriver missing (needs root and apt-get to install): tests/test_browser.py will skip"; \
	  fi; \
	fi
	@# The Subsonic client test runs the npm package subsonic-api (pinned in tests/js/package.json) with node.
	@if command -v npm >/dev/null 2>&1 && [ -f tests/js/package.json ] && [ ! -d tests/js/node_modules/subsonic-api ]; then \
	  npm install --prefix tests/js --no-audit --no-fund --silent >/dev/null 2>&1 \
	    || echo "could not install subsonic-api (npm): its client test will skip"; \
	fi
	$(VENV)/bin/python -m pytest -q tests

bench: venv
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) tensorboard_logs reports .cache
