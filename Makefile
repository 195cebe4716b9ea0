# Everything runs from .venv, created and refreshed only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench up up-processes clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ehr-ingest demo

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# Receiver, MLLP listener, worker and beat in the foreground against EHRI_* settings; Ctrl-C stops them all. When nothing
# answers at EHRI_DATABASE_URL / EHRI_REDIS_URL, devstack.servers starts embedded ones (data in .demo/) first
# and stops them after.
# The receiver's metrics are on :8000/metrics, the worker's (every pool process) on :9101/metrics, the reconcile
# worker's (reconcile runs and backfills, queue `reconcile`; the alerting cycle, queue `alerts`) on :9103/metrics, the MLLP
# listener's (HL7 v2 ADT on :2575, or EHRI_MLLP_PORT) on :9102/metrics.
up: $(STAMP)
	$(BIN)/python -m devstack.servers --home .demo -- $(MAKE) --no-print-directory up-processes

up-processes: $(STAMP)
	$(BIN)/ehr-ingest db upgrade
	trap 'kill 0' INT TERM EXIT; \
	$(BIN)/ehr-ingest serve --host 0.0.0.0 --port 8000 & \
	$(BIN)/ehr-ingest mllp serve --host 0.0.0.0 --port $${EHRI_MLLP_PORT:-2575} & \
	EHRI_WORKER_METRICS_PORT=$${EHRI_WORKER_METRICS_PORT:-9101} \
		$(BIN)/celery -A workers.celery_app worker --loglevel INFO --concurrency 2 -Q $${EHRI_QUEUE:-ingest},$${EHRI_PERIODIC_QUEUE:-periodic} & \
	EHRI_WORKER_METRICS_PORT=$${RECONCILE_METRICS_PORT:-9103} \
		$(BIN)/celery -A workers.celery_app worker --loglevel INFO --concurrency 1 -Q $${EHRI_RECONCILE_QUEUE:-reconcile},$${EHRI_ALERTS_QUEUE:-alerts} \
		-n reconcile@%h & \
	$(BIN)/celery -A workers.celery_app beat --loglevel INFO --schedule $(VENV)/beat-schedule & \
	wait

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache bench/results.json
