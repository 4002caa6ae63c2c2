# blobseal: one entry point. `make test` and `make dev` install what they need first.
PYTHON ?= python3
VENV := .venv
CHECKOV_VENV := $(VENV)/checkov
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test lint unit faults dev bench docs reset clean

install: $(VENV)/.installed node_modules/.installed $(CHECKOV_VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .   # the `blobseal` command (.venv/bin/blobseal)
	touch $@

# checkov (tests/infra) pins packaging<24 and more, which pytest cannot share: a virtualenv of its own
# inside .venv (ignored by git, removed by make clean).
$(CHECKOV_VENV)/.installed: infra/tools/requirements-checkov.txt | $(VENV)/.installed
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r infra/tools/requirements-checkov.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The whole suite: lint, types, then every test (unit, PostgreSQL, Azurite, end to end).
test: install lint
	$(PY) scripts/check_postgres.py
	$(PY) -m pytest

# The long fault cases (docs/RELIABILITY.md): 100 race trials, 1,000 throttled uploads, killed hosts.
faults: install
	$(PY) scripts/check_postgres.py
	BLOBSEAL_FAULT_TRIALS=100 $(PY) -m pytest -m "long or not long" -s --durations=0 tests/faults

# Only the tests that need neither PostgreSQL nor Azurite.
unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

# Run the app locally: Azurite + JSON vault + local PostgreSQL, `func start` or the bundled host.
PORT ?= 7071
dev: install
	$(PY) -m devhost --port $(PORT)

bench: install
	$(PY) -m bench.format_bench
	$(PY) -m bench.app_bench
	$(PY) -m bench.vault_bench
	$(PY) -m bench.upload_bench
	$(PY) -m bench.perf_bench

# The README settings table and local.settings.json.example, from the declarations in shared/config.py.
docs: $(VENV)/.installed
	$(PY) scripts/settings_docs.py

# Forget the local deployment's data (asks first): blobs in .azurite/, the embedded database in .dev/,
# the local vault's keys in secrets/. Files encrypted under those keys cannot be read afterwards.
reset:
	@printf "delete .azurite/ (blobs), .dev/ (embedded database) and secrets/ (local keys)? [y/N] "; \
	read answer; if [ "$$answer" = y ]; then rm -rf .azurite .dev secrets && echo "local state deleted"; \
	else echo "kept"; fi

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
