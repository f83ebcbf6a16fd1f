# modelrun — every workflow is one target. `make demo` shows the product; `make test` proves it.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

CHECKOV_VENV ?= .venv-checkov

.PHONY: setup checkov-env function-source protos protos-check test bench bench-setup bench-drift demo clean

setup: $(VENV)/.installed $(CHECKOV_VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

# checkov (the Terraform policy check of tests/terraform) in a virtualenv of its own: its pins clash with ours.
checkov-env: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed: terraform/requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r terraform/requirements-checkov.txt
	@touch $@

# The Cloud Functions source archive Terraform uploads: build/function-source.zip (see terraform/function_source.py).
function-source:
	$(PYTHON) terraform/function_source.py

protos: setup
	PYTHON=$(PY) protos/generate.sh

# Fails when modelrun/proto/ is not what protos/inference.proto generates.
protos-check: setup
	@tmp=$$(mktemp -d) && PYTHON=$(PY) protos/generate.sh $$tmp && \
	  for f in inference_pb2.py inference_pb2.pyi inference_pb2_grpc.py; do \
	    diff -q $$tmp/$$f modelrun/proto/$$f >/dev/null || { echo "modelrun/proto/$$f is stale: run 'make protos'"; rm -rf $$tmp; exit 1; }; \
	  done; rm -rf $$tmp; echo "generated protobuf code is current"

test: setup protos-check
	$(PY) -m pytest $(PYTEST_ARGS)

# perf_analyzer against the protocol ceiling, modelrun (logging off, on) and MLServer 1.7.1, interleaved (~8 min).
bench: setup bench-setup
	$(PY) bench/serving.py

# MLServer's own virtualenv (bench/.venv-mlserver; it needs protobuf < 7). Without it, the table says why.
bench-setup:
	-bash bench/mlserver_env.sh >/dev/null

# Drift: a full refresh over 1M logged rows (SQLite, MariaDB), an incremental one, and Evidently in memory.
bench-drift: setup
	$(PY) bench/drift.py

# Trains a small model on a synthetic dataset, runs `modelrun up`, deploys, predicts, shows drift, stops
# (`make demo ARGS=--keep` leaves the stack running to open the dashboard).
demo: $(VENV)/.installed
	$(PY) examples/demo.py $(ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache build *.egg-info
