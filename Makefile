# django-rq-sequence: build, check, test and demo.
#
#   make demo        100 sequences on two real workers, with a live progress bar, then a
#                    tour: failure and compensation, pause, sleep, an event, a killed worker
#   make admin       the admin on the demo's database (a superuser's password printed)
#   make test        everything CI runs: lint, types, Django checks, the docs' strict
#                    build, the package build, the suite on Python 3.12 + Django 6 on
#                    SQLite and PostgreSQL, Python 3.11 + Django 5.2 LTS on PostgreSQL,
#                    and on SQLite: Python 3.13 + Django 6.0, the newest release of
#                    everything (upgraded at each run) and the lowest versions
#                    pyproject.toml allows (Python 3.11 + Django 5.2)
#   make docs        builds the documentation site and serves it on a free local port
#   make lint | typecheck | check | docs-build | package | pytest | bench | clean
#
# The environments are made here from nothing (.venvs/) and only rebuilt when
# pyproject.toml or scripts/requirements/ change, but the newest's, upgraded at every
# `make test`. Redis: $REDIS_URL, else 127.0.0.1:6379, else a private server
# (scripts/redis_url.py). PostgreSQL: 127.0.0.1:5432, skipped locally when absent,
# started (or failed) when CI=true (scripts/postgres.py).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ENV_MAIN := .venvs/py312-django6
ENV_LTS := .venvs/py311-django52
ENV_60 := .venvs/py313-django60
ENV_NEWEST := .venvs/py312-newest
ENV_LOWEST := .venvs/py311-lowest
ENV_BENCH := .venvs/bench
ENV_DEMO := .venvs/demo
PY := $(ENV_MAIN)/bin/python
PY_LTS := $(ENV_LTS)/bin/python
PY_60 := $(ENV_60)/bin/python
PY_NEWEST := $(ENV_NEWEST)/bin/python
PY_LOWEST := $(ENV_LOWEST)/bin/python
PY_BENCH := $(ENV_BENCH)/bin/python
PY_DEMO := $(ENV_DEMO)/bin/python
REQS := scripts/requirements

# The suite's passes: name, environment, database, Redis database (one per pass, so
# passes running side by side never flush each other's queues).
# The primary environment runs the whole suite on both databases, PostgreSQL's in two
# passes (the fault tests apart) so that no single pass is the length of the run.
# Django 5.2 LTS on Python 3.11 runs on PostgreSQL at its newest patch release, and on
# SQLite at the lowest version pyproject.toml declares (the lowest pass).
PASSES := py312-django6-sqlite py311-django52-postgres py312-django6-postgres \
	py312-django6-postgres-faults py311-lowest-sqlite py312-django6-workers \
	py313-django60-sqlite py312-newest-sqlite
# How many passes run at once. The suite mostly waits on worker processes, and each pass
# has its own test database and Redis database, so four run side by side, the longest
# first, the static checks beside them; each pass's environment is built (or checked)
# as it starts. TEST_JOBS=1 runs them one by one.
TEST_JOBS ?= 4
# Extra pytest arguments, e.g. PYTEST_ARGS="-k retry -x".
PYTEST_ARGS ?=
# Extra pytest arguments for the Django 5.2 LTS pass only. To keep `make test` within
# 15 minutes on two cores they leave out the fault-injection tests (tests/faults, and
# anything marked slow): those take two thirds of a pass and test the engine against
# RQ, Redis and the database rather than Django, and they run on the primary env on
# both databases. LTS_PYTEST_ARGS= runs the whole suite there too.
# How a worker process stops, and django-rq's rqworker under faults, depend on Python,
# RQ and redis-py, not on Django or the database, and mostly wait on processes and on
# RQ's own timers (its scheduler lock outlives a killed holder by a minute): those tests
# run in a pass of their own on the primary env (PostgreSQL, where a killed horse's
# claim can outlive it), beside the long passes, and on the newest and lowest passes
# (redis-py 8.2 and 5.0); the other passes leave them out.
STOP_TESTS := tests/test_worker_stop.py tests/test_rqworker.py
RQWORKER_FAULTS := tests/faults/test_rqworker_storm.py tests/faults/test_rqworker_scheduler.py
WORKER_TESTS := $(STOP_TESTS) $(RQWORKER_FAULTS)
SKIP_STOP := $(addprefix --ignore=,$(STOP_TESTS))
SKIP_WORKER_TESTS := $(addprefix --ignore=,$(WORKER_TESTS))
LTS_PYTEST_ARGS ?= -m "not slow" --ignore=tests/faults $(SKIP_STOP)
# The same for the pass on Python 3.13 + Django 6.0, the versions between the two above
# (declared in pyproject.toml), on SQLite: the suite less the fault tests and the browser.
MID_PYTEST_ARGS ?= $(LTS_PYTEST_ARGS) --ignore=tests/browser
# The same for the passes on the newest releases and on the lowest versions declared: what
# they test is that the library runs on those versions, which the suite less the fault and
# browser tests shows; the fault tests run on the primary env.
NEWEST_PYTEST_ARGS ?= -m "not slow" --ignore=tests/faults --ignore=tests/browser
LOWEST_PYTEST_ARGS ?= $(NEWEST_PYTEST_ARGS)

.PHONY: help env envs lint format typecheck check docs-build docs package static pytest test \
	passes bench demo admin clean FORCE \
	$(addprefix pass-,$(PASSES))

help:
	@sed -n '1,18s/^# \{0,1\}//p' Makefile

# -- environments ---------------------------------------------------------------

$(ENV_MAIN)/.installed: pyproject.toml $(REQS)/test.txt $(REQS)/lint.txt $(REQS)/docs.txt $(REQS)/django6.txt scripts/mkenv.sh
	scripts/mkenv.sh $(ENV_MAIN) 3.12 3.12.1 $(REQS)/django6.txt $(REQS)/test.txt $(REQS)/lint.txt $(REQS)/docs.txt

$(ENV_LTS)/.installed: pyproject.toml $(REQS)/test.txt $(REQS)/django52.txt scripts/mkenv.sh
	scripts/mkenv.sh $(ENV_LTS) 3.11 3.11.7 $(REQS)/django52.txt $(REQS)/test.txt

$(ENV_60)/.installed: pyproject.toml $(REQS)/test.txt $(REQS)/django60.txt scripts/mkenv.sh
	scripts/mkenv.sh $(ENV_60) 3.13 3.13.0 $(REQS)/django60.txt $(REQS)/test.txt

# The lowest versions pyproject.toml declares (and test.txt's lower bounds), pinned in
# lowest.txt, on the lowest Python: a minimum that stopped working fails here, not on a
# user's machine.
$(ENV_LOWEST)/.installed: pyproject.toml $(REQS)/test.txt $(REQS)/lowest.txt scripts/mkenv.sh
	scripts/mkenv.sh $(ENV_LOWEST) 3.11 3.11.7 -c $(REQS)/lowest.txt $(REQS)/test.txt

# The newest releases, as `pip install django-rq-sequence` resolves them that day: nothing
# pinned (test.txt has lower bounds only, Django comes from pyproject.toml) and every
# dependency upgraded, theirs too (eager). The other environments are rebuilt only when a
# file changes, so they keep the versions of their last build; `make test` upgrades this
# one at every run (UPGRADE_NEWEST=1, once, before the checks and passes that use it), so
# a release that breaks us shows the day it is out. `make envs UPGRADE_NEWEST=1` does it
# by hand.
$(ENV_NEWEST)/.installed: pyproject.toml $(REQS)/test.txt scripts/mkenv.sh $(if $(UPGRADE_NEWEST),FORCE)
	PIP_UPGRADE_STRATEGY=eager scripts/mkenv.sh $(ENV_NEWEST) 3.12 3.12.1 $(REQS)/test.txt
FORCE:

# The benchmark's own: Celery's and the peers' requirements (an older python-dateutil,
# SQLAlchemy) must not change the environment the suite runs in.
$(ENV_BENCH)/.installed: pyproject.toml $(REQS)/django6.txt bench/requirements.txt scripts/mkenv.sh
	scripts/mkenv.sh $(ENV_BENCH) 3.12 3.12.1 $(REQS)/django6.txt bench/requirements.txt

# The demo's own: the project and Django only, so a first `make demo` does not build the
# test environment (linters, type stubs, a browser driver).
$(ENV_DEMO)/.installed: pyproject.toml $(REQS)/django6.txt scripts/mkenv.sh
	scripts/mkenv.sh $(ENV_DEMO) 3.12 3.12.1 $(REQS)/django6.txt

env: $(ENV_MAIN)/.installed
envs: $(ENV_MAIN)/.installed $(ENV_LTS)/.installed $(ENV_60)/.installed $(ENV_LOWEST)/.installed \
	$(ENV_NEWEST)/.installed

# -- static checks ---------------------------------------------------------------

lint: env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: env
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

typecheck: env
	$(PY) -m mypy sequence

# System checks and missing migrations, under each Django version tested. SQLite in var/, so
# no server is needed.
check: envs
	@for py in $(PY) $(PY_LTS) $(PY_60) $(PY_LOWEST) $(PY_NEWEST); do \
		echo "== manage.py check / makemigrations --check ($$($$py -c 'import django; print("Django", django.__version__)'))"; \
		env -u DATABASE_URL SEQUENCE_DB_NAME=$(CURDIR)/var/check.sqlite3 $$py manage.py check --fail-level WARNING; \
		env -u DATABASE_URL SEQUENCE_DB_NAME=$(CURDIR)/var/check.sqlite3 $$py manage.py makemigrations --check --dry-run; \
	done

# The documentation site (mkdocs.yml), strict: a broken link or anchor, a missing snippet
# or a docstring mkdocstrings cannot read fails the build.
docs-build: env
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir $(CURDIR)/var/site

# Builds the site, then serves it (rebuilding on changes) until Ctrl-C.
docs: docs-build
	@export NO_MKDOCS_2_WARNING=1; \
	port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	echo "== docs: http://127.0.0.1:$$port/ (Ctrl-C stops)"; \
	exec $(PY) -m mkdocs serve --strict --dev-addr 127.0.0.1:$$port

# The release files: the sdist, and the wheel built from it, into a scratch directory;
# their metadata and README as PyPI renders them (twine --strict); and no test files in
# the sdist (MANIFEST.in leaves them out).
package: env
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	$(PY) -m build --quiet --outdir "$$out" . ; \
	$(PY) -m twine check --strict "$$out"/*; \
	if tar tzf "$$out"/*.tar.gz | grep -E '^[^/]+/(tests|testproject|bench|examples|scripts)/'; then \
		echo "== package: the sdist ships the files above; prune them in MANIFEST.in"; exit 1; \
	fi; \
	echo "== package: $$(cd "$$out" && ls | tr '\n' ' ')ok"

static: lint typecheck check docs-build package

# -- tests -----------------------------------------------------------------------

pass-py312-django6-sqlite: env
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY) sqlite 15 $(SKIP_WORKER_TESTS) $(PYTEST_ARGS)
pass-py312-django6-postgres: env
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY) postgres 14 --ignore=tests/faults $(SKIP_WORKER_TESTS) $(PYTEST_ARGS)
pass-py312-django6-postgres-faults: env
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY) postgres 13 tests/faults $(SKIP_WORKER_TESTS) $(PYTEST_ARGS)
pass-py312-django6-workers: env
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY) postgres 10 $(WORKER_TESTS) $(PYTEST_ARGS)
pass-py311-django52-postgres: $(ENV_LTS)/.installed
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY_LTS) postgres 12 $(LTS_PYTEST_ARGS) $(PYTEST_ARGS)
pass-py313-django60-sqlite: $(ENV_60)/.installed
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY_60) sqlite 11 $(MID_PYTEST_ARGS) $(PYTEST_ARGS)
# Redis databases 5 and 4: 10 to 15 are the passes above, 6 to 9 are for runs by hand.
# The newest pass runs only when the newest releases differ from what the primary
# environment has: while they are the same versions, the primary passes (the whole suite,
# on both databases) have already run them, and a third run would only cost the time.
pass-py312-newest-sqlite: $(ENV_NEWEST)/.installed env
	@if $(PY_NEWEST) scripts/versions.py --same-as $(PY); then \
		name=$(subst pass-,,$@); mkdir -p test-output/$$name; rm -f test-output/$$name/junit.xml; \
		echo "the newest releases are the primary environment's: $$($(PY_NEWEST) scripts/versions.py)" \
			> test-output/$$name/skipped; \
		echo "== $$name: SKIPPED, $$(cat test-output/$$name/skipped)"; \
	else \
		scripts/pytest_pass.sh $(subst pass-,,$@) $(PY_NEWEST) sqlite 5 $(NEWEST_PYTEST_ARGS) $(PYTEST_ARGS); \
	fi
pass-py311-lowest-sqlite: $(ENV_LOWEST)/.installed
	scripts/pytest_pass.sh $(subst pass-,,$@) $(PY_LOWEST) sqlite 4 $(LOWEST_PYTEST_ARGS) $(PYTEST_ARGS)

# Every pass, keeping on past a failing one; then the tally, and the private Redis (if
# one was started) is stopped whatever happened. Each pass builds the environment it
# needs, so the first passes start while the others' environments are made.
passes: env
	@scripts/browser_deps.sh
	@rc=0; \
	$(MAKE) -k -j$(TEST_JOBS) --output-sync=target $(call ordered,$(addprefix pass-,$(PASSES))) || rc=$$?; \
	$(PY) scripts/redis_url.py --name test --stop; \
	$(PY) scripts/summarize.py $(PASSES) || rc=1; \
	exit $$rc

# The goals of one parallel make, in the order they start: the three longest passes
# first, then (with WITH_STATIC=1) the static checks, then the rest.
ordered = $(wordlist 1,3,$(1)) $(if $(WITH_STATIC),static) $(wordlist 4,99,$(1))

# The quick local loop: the primary environment on SQLite.
pytest: env
	@rc=0; $(MAKE) pass-py312-django6-sqlite || rc=$$?; \
	$(PY) scripts/redis_url.py --name test --stop; exit $$rc

# Everything CI runs. Static checks and the passes all run even when one fails, so one
# run shows every problem; the exit status is non-zero if anything failed. The static
# checks run beside the passes, as one more job of the same parallel make.
test:
	@start=$$(date +%s); rc=0; \
	$(MAKE) passes WITH_STATIC=1 UPGRADE_NEWEST=1 || rc=$$?; \
	echo "== make test: $$([ $$rc = 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - start ))s"; \
	$(PY) scripts/summarize.py --total $(PASSES) || true; \
	exit $$rc

# -- running -----------------------------------------------------------------------

# The benchmark starts its own Redis and workers, prints where its time goes and the
# total, and exits non-zero if it cannot write bench/RESULTS.md. Its environment has
# Celery, DBOS and django-absurd (pinned), for the reference column and the peers, and
# py-spy for the profile.
bench: $(ENV_BENCH)/.installed
	$(PY_BENCH) -m bench

# A fresh SQLite database and Redis database 1 (flushed; nothing else is touched).
DEMO_DB := $(CURDIR)/var/demo.sqlite3
demo: $(ENV_DEMO)/.installed
	@rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	@rc=0; export SEQUENCE_DB_NAME=$(DEMO_DB); unset DATABASE_URL; \
	export REDIS_URL=$$($(PY_DEMO) scripts/redis_url.py --name demo --db 1); \
	$(PY_DEMO) manage.py migrate --verbosity 0 && $(PY_DEMO) manage.py demo --flush || rc=$$?; \
	$(PY_DEMO) scripts/redis_url.py --name demo --stop; exit $$rc

# The admin on the demo's database: a superuser `admin` (made if missing) with a fresh
# password, printed; runserver on a free local port until Ctrl-C; Redis for the admin's
# queue figures, stopped on the way out.
admin: $(ENV_DEMO)/.installed
	@test -f $(DEMO_DB) || { echo "== admin: no demo database yet; run make demo first"; exit 1; }
	@export SEQUENCE_DB_NAME=$(DEMO_DB); unset DATABASE_URL; \
	stop() { $(PY_DEMO) scripts/redis_url.py --name demo --stop; }; trap stop EXIT; trap 'exit 130' INT TERM; \
	export REDIS_URL=$$($(PY_DEMO) scripts/redis_url.py --name demo --db 1); \
	$(PY_DEMO) manage.py demo_admin

clean:
	rm -rf .venvs test-output var/demo.sqlite3* var/check.sqlite3* var/site .mypy_cache .ruff_cache
