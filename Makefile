# Two commands on a fresh machine: `make repro` runs the default round, `make test` the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup browser sshd repro test ui dag plots clean prefect-up prefect-down

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, alone: a looser requirement would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# `dvc plots show` offline: Vega inlined into .dvc/plots_template.html (pinned, sha512-checked, from npm's registry)
	$(BIN)/python -m mlperf_round.vega_template
	touch $(STAMP)

# Debian's Chromium for the MLflow UI test (Playwright drives it; no browser is downloaded)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: no chromium (apt-get install chromium); the MLflow UI test will skip"

# Debian's OpenSSH server for the SSH-remote tests (they start it on loopback with keys they make)
sshd:
	@command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq openssh-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; }; }; } \
	  || echo "note: no sshd (apt-get install openssh-server); the SSH-remote tests will skip or use a local remote"

# ROUND=rounds/v6.1.yaml runs that round file instead, in .workspaces/<its name>, with the LoadGen its version needs
ROUND ?=
repro: $(STAMP)
	$(if $(ROUND),$(BIN)/mlperf-round repro --round $(ROUND),$(BIN)/dvc repro)

test: $(STAMP) browser sshd
	$(BIN)/ruff check .
	$(BIN)/pytest -q

ui: $(STAMP)
	@$(BIN)/python -c "from mlperf_round.tracking import print_ui_link; print_ui_link()"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --workers 1 --host 127.0.0.1

dag: $(STAMP)
	$(BIN)/dvc dag

plots: $(STAMP)
	$(BIN)/dvc plots show -o submission/dvc_plots

prefect-up: $(STAMP)
	$(BIN)/python -m flows.local up --workers 2

prefect-down: $(STAMP)
	$(BIN)/python -m flows.local down

clean:
	rm -rf artifacts submission mlruns .dvc/cache .dvc/tmp .prefect .workspaces
