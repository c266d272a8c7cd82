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

demo: $(STAMP)
	@$(BIN)/ifc check policies/default.flow --workspace examples/webapp
	@echo
	@$(BIN)/ifc decide --policy policies/default.flow read src/app.py connect https://api.anthropic.com read .env connect smtp://smtp.gmail.com:587

test: $(STAMP)
	@$(BIN)/ruff check -q ifc caps vmm tests bench
	@$(BIN)/python -m pytest

lint: $(STAMP)
	@$(BIN)/ruff check ifc caps vmm tests bench

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
