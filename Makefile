# Two commands on a fresh machine: `make run` and `make test`. Both create .venv on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench schemas fuzz chaos clean install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "roomserver needs Python 3.11 or newer: run make PYTHON=python3.11 ..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m worker run

lint: $(STAMP)
	$(VENV)/bin/ruff check worker tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench

fuzz: $(STAMP)
	ROOMSERVER_FUZZ_DAGS=100000 $(VENV)/bin/pytest -q -p no:cacheprovider tests/core -k differential

# The long fault run (issue 8): >= 20,000 events, 20 SIGKILLs, a NATS node and a PostgreSQL
# restart on a 3-node cluster with 3 workers; prints the figures and fails on any loss.
chaos: $(STAMP)
	$(PY) -m chaos

schemas: $(STAMP)
	$(PY) -m worker.messages.schemas schemas/messages

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
