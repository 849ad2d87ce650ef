# The two quick-start commands: `make run` and `make test`. Both install exactly the locked
# versions (requirements.txt, requirements-dev.txt: `make lock` writes them from pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK_DIR ?= .
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run test check setup lock lock-check upgrade format bench clean

run: $(VENV)/.installed
	$(BIN)/chatrelay serve

# Sets up PostgreSQL, Redis, nginx and Chromium (scripts/test-setup.sh), then lints, type
# checks, verifies the lock and runs the whole suite.
test: setup check
	CHATRELAY_TEST_LOCK_DIR=$(abspath $(LOCK_DIR)) $(BIN)/python -m pytest $(PYTEST_ARGS)

setup:
	bash scripts/test-setup.sh

check: $(VENV)/.installed-dev
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/python scripts/lock.py --check

# The runtime lock is the dev lock's subset (same versions), so both share one virtualenv.
$(VENV)/.installed: $(LOCK_DIR)/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK_DIR)/requirements.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# A changed dev lock rebuilds the virtualenv from scratch, so nothing unlocked stays in it.
$(VENV)/.installed-dev: $(LOCK_DIR)/requirements-dev.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK_DIR)/requirements-dev.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@ $(VENV)/.installed

# Re-resolve after editing pyproject.toml's ranges, keeping every other locked version.
lock: $(VENV)/.installed-dev
	$(BIN)/python scripts/lock.py

# The newest versions the ranges allow, tried in a separate virtualenv with the whole suite;
# the lock files are replaced only when it passes (then record the upgrade in CHANGELOG.md).
upgrade: $(VENV)/.installed-dev
	rm -rf .upgrade && mkdir .upgrade
	$(BIN)/python scripts/lock.py --upgrade --out-dir .upgrade
	diff -u requirements-dev.txt .upgrade/requirements-dev.txt | grep -E '^[-+][a-z0-9]' || true
	$(MAKE) test VENV=.upgrade/venv LOCK_DIR=.upgrade \
	    || { echo "upgrade: the suite fails on these versions; the lock files are unchanged"; exit 1; }
	cp .upgrade/requirements.txt .upgrade/requirements-dev.txt .
	rm -rf .upgrade $(VENV)/.installed-dev
	@echo "upgrade: the suite passes; requirements*.txt rewritten. Record it in CHANGELOG.md."

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests bench scripts
	$(BIN)/ruff check --fix src tests bench scripts

clean:
	rm -rf $(VENV) .upgrade .mypy_cache .ruff_cache

# Streaming benchmark (a few minutes; not part of `make test`): writes docs/BENCHMARKS.md and
# bench/results/latest.json. Quick smoke run: .venv/bin/python bench/relay_bench.py --quick
bench: $(VENV)/.installed
	$(BIN)/python bench/relay_bench.py $(BENCH_ARGS)
