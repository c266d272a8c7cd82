# Two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
# Idempotent: a second run only re-installs when pyproject.toml changed, and prints nothing for set-up.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench setup sysdeps clean

setup: $(STAMP)

sysdeps:
	@scripts/sysdeps.sh

$(STAMP): pyproject.toml scripts/sysdeps.sh
	@scripts/sysdeps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The main job on the embedded default policy: audit the sample workspace, then run a scripted agent in a
# microVM behind the FUSE filesystem and the egress hook; it does real work, then follows an injected
# instruction to send `.env` out. Every exfiltration must be denied; the reviewer's report is written.
demo: $(STAMP)
	@$(BIN)/python examples/demo.py

test: $(STAMP)
	@$(BIN)/ruff check -q ifc caps vmm tests bench
	@$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	@$(BIN)/ruff check ifc caps vmm tests bench

bench: $(STAMP)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
