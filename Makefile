# bonescan: `make demo` runs the pipeline on the embedded phantom cohort; `make test` runs the tests.
# Both create .venv and install the locked dependencies on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `bonescan` and `dvc` from the project environment.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test install lint bench lock clean-outputs

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bonescan secret
	dvc repro
	bonescan summary

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src pipeline tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

# Remove pipeline outputs (not the DVC cache, not the key): the next `make demo` rebuilds from cache.
clean-outputs:
	rm -rf data/raw/phantoms data/interim data/processed reports metrics

# Re-pin every installed package after changing dependencies in pyproject.toml.
lock: $(STAMP)
	{ sed -n '1,2p' requirements.lock; $(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
