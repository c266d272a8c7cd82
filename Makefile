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

# The main job on the embedded default policy: audit the sample workspace, then replay what an agent
# does when an injected issue tells it to mail `.env` out. The replay must end in a denial (exit 1).
demo: $(STAMP)
	@$(BIN)/ifc check policies/default.flow --workspace examples/webapp
	@echo
	@rm -rf runs/demo
	@$(BIN)/ifc decide --policy policies/default.flow --run-dir runs/demo \
	    read src/app.py  connect https://api.anthropic.com  write src/app.py \
	    read inbox/issue-42.md  read .env  write src/notes.txt \
	    session helper  read src/notes.txt  connect smtp.gmail.com:587  connect https://api.anthropic.com; \
	  status=$$?; if [ $$status -ne 1 ]; then echo "demo: expected the exfiltration to be denied" >&2; exit 1; fi
	@$(BIN)/ifc report runs/demo --format html -o runs/demo/report.html
	@echo
	@echo "The reviewer's report: runs/demo/report.html  (or: $(BIN)/ifc report runs/demo)"

test: $(STAMP)
	@$(BIN)/ruff check -q ifc caps vmm tests bench
	@$(BIN)/python -m pytest

lint: $(STAMP)
	@$(BIN)/ruff check ifc caps vmm tests bench

bench: $(STAMP)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
