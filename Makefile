# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PYTHON := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test test-postgres test-e2e lint serve bench clean

$(UV):
	$(PY) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target $(TOOLS) uv

$(VENV)/.installed: pyproject.toml | $(UV)
	test -d $(VENV) || $(UV) venv --quiet --python $(PY) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
	command -v qemu-img >/dev/null || (apt-get update -qq && apt-get install -y -qq qemu-utils)

# the demo's naming-policy hook calls the demo itself on this machine
demo: export SKYPORT_ALLOWED_PRIVATE_NETWORKS ?= 127.0.0.1/32
demo: export SKYPORT_DEMO_URL ?= http://$(HOST):$(PORT)
demo: install
	$(PYTHON) manage.py generate_fernet_key --write
	$(PYTHON) manage.py migrate --noinput
	$(PYTHON) manage.py seed_demo
	$(PYTHON) manage.py collectstatic --noinput --verbosity 0
	@echo ""
	@echo "Skyport demo on http://$(HOST):$(PORT)/  (password for every demo user: skyport-demo)"
	@echo "  marty (manager) · sarah (security) · sam (admin) · dennis (designer) · connor (member) · vera (viewer) · mallory (Globex admin)"
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) portal.asgi:application

test: install
	$(PYTHON) -m pytest -n 2 -m "not e2e and not postgres and not openstack and not worker" $(PYTEST_ARGS)

test-postgres: install
	$(PYTHON) -m pytest -n 2 -m "not e2e and not openstack and not worker" $(PYTEST_ARGS)

test-e2e: install
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)
	DJANGO_ALLOW_ASYNC_UNSAFE=true $(PYTHON) -m pytest -m e2e -p no:xdist tests/e2e $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy portal apps

# production: with REDIS_URL set, daphne + Celery workers (SKYPORT_WORKERS processes, default 2) + Celery beat
# (Procfile, run by honcho); without it, the embedded default in one process
serve: install
	$(PYTHON) manage.py migrate --noinput
	$(PYTHON) manage.py collectstatic --noinput --verbosity 0
	mkdir -p $${SKYPORT_VAR_DIR:-var}
	@if [ -n "$$REDIS_URL" ]; then \
	  PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SKYPORT_HOST=$(HOST) SKYPORT_PORT=$(PORT) $(VENV)/bin/honcho start -f Procfile -c worker=$${SKYPORT_WORKERS:-2}; \
	else \
	  $(VENV)/bin/daphne -b $(HOST) -p $(PORT) portal.asgi:application; \
	fi

# benchmarks: PostgreSQL and Redis of this machine unless DATABASE_URL / REDIS_URL say otherwise (each benchmark
# makes and drops its own database; a SQLite DATABASE_URL or eager Celery is refused). BENCH_ARGS="list_scale" runs
# one; --record writes the headline figures into docs/performance.md.
bench: install
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/skyport_bench} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/7} \
	$(PYTHON) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) staticfiles
