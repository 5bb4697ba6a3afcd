# vae-bench. `make test` and `make bench` set up their own environment from nothing.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,mnist,ray
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

JOBS   ?= 1
RESULTS ?= results
PROFILE ?= default
VB     := $(VENV)/bin/vae-bench

.PHONY: setup docs test fuzz smoke bench bench-check bench-speed throughput report reference lint clean fashion-data

setup: $(STAMP)

# torch first (pinned: the CPU wheel; override with TORCH=... for CUDA), then the project.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# The property-based tests of tests/test_fuzz.py with many fresh examples (CI runs a fixed few).
fuzz: setup
	VAE_BENCH_FUZZ=long $(PY) -m pytest -q tests/test_fuzz.py

# The documentation site (docs/, mkdocs.yml) into build/site; --strict: a broken link, a page
# missing from the nav or a docstring the API reference cannot render fails the build.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# A profile (default: `default`; `make bench PROFILE=collapse` for the collapse profile):
# resumes (only missing runs are trained), then rebuilds its report.
bench: setup
	$(VB) suite --profile $(PROFILE) --jobs $(JOBS) --results $(RESULTS)
	$(VB) report --profile $(PROFILE) --results $(RESULTS) --reports reports

report: setup
	$(VB) report --profile $(PROFILE) --results $(RESULTS) --reports reports

# Rerun a whole profile from nothing in build/ and compare with the committed summary: ends
# with a verdict (identical / statistically reproduced / not reproduced) and its exit code.
bench-check: setup
	rm -rf build/bench-check
	$(VB) suite --profile $(PROFILE) --jobs $(JOBS) --results build/bench-check
	$(VB) report --profile $(PROFILE) --results build/bench-check --reports build/bench-check/reports
	$(VB) compare build/bench-check/$(PROFILE)/summary.csv results/$(PROFILE)/summary.csv \
		--profile $(PROFILE)

# Speed figures (never part of `make test`): pytest-benchmark JSON and the throughput table.
bench-speed: setup
	$(PY) -m pytest benchmarks -q --benchmark-autosave \
		--benchmark-storage=results/throughput/pytest-benchmark

throughput: setup
	$(VB) throughput --device cpu

# Regenerate the CI reference (refused unless SUITE_VERSION in bench/config.py was bumped).
reference: setup
	$(VB) reference --profile smoke

# Fashion-MNIST offline (the fashion profile): Debian's dataset-fashion-mnist package, fetched
# with apt-get download (no root) and unpacked into the data directory; the loader verifies the
# files' checksums. DATA: the data directory ($VAE_BENCH_DATA, else ~/.cache/vae-bench).
DATA ?= $(if $(VAE_BENCH_DATA),$(VAE_BENCH_DATA),$(HOME)/.cache/vae-bench)
fashion-data:
	rm -rf build/fashion-deb && mkdir -p build/fashion-deb "$(DATA)/fashion-mnist"
	cd build/fashion-deb && apt-get download dataset-fashion-mnist
	dpkg-deb -x build/fashion-deb/dataset-fashion-mnist_*.deb build/fashion-deb/root
	cp build/fashion-deb/root/usr/share/datasets/fashion-mnist/*-ubyte.gz "$(DATA)/fashion-mnist/"
	rm -rf build/fashion-deb

smoke: setup
	$(VENV)/bin/vae-bench run --variant vae --dataset digits --seed 0 --epochs 2

lint: setup
	$(VENV)/bin/ruff check bench variants tests

clean:
	rm -rf $(VENV) .pytest_cache
