# The two commands of the README:  make book   (the published book)   make test   (what CI runs)
# Both create .venv and install everything they need on a fresh machine; so does make lab (JupyterLab).

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= cpu
DEVICE  ?= auto
FORCE   ?= 0

.PHONY: install lint test book lab bench clean

$(STAMP): pyproject.toml requirements-lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements-lock.txt -e ".[test,book,lab]"
	$(BIN)/python -m ipykernel install --sys-prefix --name reidbook --display-name "reidbook (.venv)"
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check reidbook tests benchmarks

test: lint
	$(BIN)/pytest

# Re-execute every chapter (papermill, profile $(PROFILE), device $(DEVICE)) and build _build/html; prints each
# chapter's time against its budget; FORCE=1 retrains cached runs.
book: install
	$(BIN)/python -m reidbook.book --profile $(PROFILE) --device $(DEVICE) $(if $(filter 1,$(FORCE)),--force,)

# JupyterLab from .venv on book/, with the "reidbook (.venv)" kernel and widget progress bars; PORT=8890 picks
# the port. tests/test_browser.py starts the same command.
lab: install
	$(BIN)/python -m reidbook.book --lab $(if $(PORT),--port $(PORT),)

bench: install
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_evaluation.py
	$(BIN)/python benchmarks/bench_qaconv.py

clean:
	rm -rf _build book/_executed
