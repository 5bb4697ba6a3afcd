# vae-bench. `make test` and `make bench` set up their own environment from nothing.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,mnist
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test smoke lint clean

setup: $(STAMP)

# torch first (pinned: the CPU wheel; override with TORCH=... for CUDA), then the project.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

smoke: setup
	$(VENV)/bin/vae-bench run --variant vae --dataset digits --seed 0 --epochs 2

lint: setup
	$(VENV)/bin/ruff check bench variants tests

clean:
	rm -rf $(VENV) .pytest_cache
