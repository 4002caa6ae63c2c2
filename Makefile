# blobseal: one entry point. `make test` and `make dev` install what they need first.
# Python 3.13 (what the app runs on in Azure): python3.13 on PATH, else pyenv's newest 3.13
# (scripts/find_python.sh); `make PYTHON=/path/to/python3.13 ...` overrides.
PYTHON ?= $(shell scripts/find_python.sh)
VENV := .venv
CHECKOV_VENV := $(VENV)/checkov
PY := $(VENV)/bin/python
PGBOUNCER_DIR := $(VENV)/pgbouncer
PGBOUNCER_DEBS := pgbouncer libc-ares2 libevent-2.1-7
CLIENTS_DIR := $(VENV)/clients
CLIENT_DEBS := aria2 libaria2-0 libc-ares2 $(if $(shell command -v curl),,curl libcurl4) $(if $(shell command -v wget),,wget)
PGBOUNCER = LD_LIBRARY_PATH="$$(echo $(PGBOUNCER_DIR)/root/usr/lib/*-linux-gnu)" $(PGBOUNCER_DIR)/root/usr/sbin/pgbouncer
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test lint unit faults dev bench scale explain docs reset clean

install: $(VENV)/.installed node_modules/.installed $(CHECKOV_VENV)/.installed $(PGBOUNCER_DIR)/.installed \
    $(CLIENTS_DIR)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "blobseal needs Python 3.13 and found none: install it (e.g. 'pyenv install 3.13'," \
	    "see README.md) or run 'make PYTHON=/path/to/python3.13 ...'" >&2; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
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

# PgBouncer for tests/integration/test_pgbouncer.py (transaction pooling, as Azure's built-in one on port
# 6432): Debian's package and the two libraries a slim machine may lack, unpacked into .venv/pgbouncer with
# `apt-get download` + `dpkg-deb -x` (no root, nothing installed system-wide; about a second). When they
# cannot be fetched, install goes on with a warning and that test fails saying so.
$(PGBOUNCER_DIR)/.installed: | $(VENV)/.installed
	@if scripts/unpack_debs.sh $(PGBOUNCER_DIR) "usr/sbin/pgbouncer --version" $(PGBOUNCER_DEBS); then \
	    echo "$$($(PGBOUNCER) --version | head -1) in $(PGBOUNCER_DIR)"; \
	else \
	    echo "warning: PgBouncer could not be unpacked into $(PGBOUNCER_DIR) (see" \
	        "$(PGBOUNCER_DIR).log; 'apt-get update' may help): tests/integration/test_pgbouncer.py will fail" >&2; \
	fi

# The HTTP clients tests/e2e/test_clients.py downloads with: aria2c always (rarely installed), curl and wget
# only where the machine lacks them; unpacked the same way into .venv/clients.
$(CLIENTS_DIR)/.installed: | $(VENV)/.installed
	@if scripts/unpack_debs.sh $(CLIENTS_DIR) "usr/bin/aria2c --version" $(CLIENT_DEBS); then \
	    echo "HTTP clients ($(CLIENT_DEBS)) in $(CLIENTS_DIR)"; \
	else \
	    echo "warning: $(CLIENT_DEBS) could not be unpacked into $(CLIENTS_DIR) (see $(CLIENTS_DIR).log):" \
	        "tests/e2e/test_clients.py will fail" >&2; \
	fi

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
	$(PY) -m bench.runtime_bench --profile
	$(PY) -m bench.access_bench
	$(PY) -m bench.format_bench
	$(PY) -m bench.app_bench
	$(PY) -m bench.vault_bench
	$(PY) -m bench.upload_bench
	$(PY) -m bench.perf_bench

# The scale simulation of docs/SCALE.md (about six minutes): key modes at 1, 4 and 8 worker processes
# against the Key Vault stand-in enforcing Key Vault's limits scaled by 1/20.
scale: install
	$(PY) scripts/check_postgres.py
	$(PY) -m bench.scale_bench

# EXPLAIN ANALYZE of every hot query on a filled scratch database: writes docs/DATABASE.md (about 20 s).
explain: install
	$(PY) scripts/check_postgres.py
	$(PY) -m bench.explain

# The README settings table and local.settings.json.example, from the declarations in shared/config.py.
docs: $(VENV)/.installed
	$(PY) scripts/settings_docs.py

# Forget the local deployment's data (asks first): blobs in .azurite/, the embedded database in .dev/,
# the local vault's keys in secrets/ and its master key. Files encrypted under those keys cannot be read afterwards.
# Refused while `make dev` runs (scripts/reset.py).
reset:
	@python3 scripts/reset.py

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
