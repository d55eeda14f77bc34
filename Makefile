# The README's two commands: `make demo` and `make test`. Both create .venv when missing.
SYSTEM_PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-apps test-accuracy test-torch test-fast soak lint docs check-java bench clean

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Spark needs Java 17 or newer, and no 'java' is on PATH."; \
	  echo "Install a Java 17 runtime, e.g. 'apt-get install openjdk-17-jre-headless'."; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1); \
	if [ "$${v:-0}" -lt 17 ]; then \
	  echo "Spark needs Java 17 or newer, but 'java' is version $$v."; \
	  echo "Install a Java 17 runtime, e.g. 'apt-get install openjdk-17-jre-headless'."; exit 1; fi

$(PY):
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The demo reads scikit-learn's bundled digits: the `examples` extra.
$(VENV)/.installed: setup.py | $(PY)
	$(PIP) install --quiet -e ".[examples]"
	touch $@

$(VENV)/.installed-test: setup.py | $(PY)
	$(PIP) install --quiet -e ".[test,examples]"
	touch $@ $(VENV)/.installed

# PyTorch's PyPI wheel pulls its CUDA libraries (GBs, about 2 minutes): only `make test-torch`.
$(VENV)/.installed-torch: setup.py $(VENV)/.installed-test
	$(PIP) install --quiet -e ".[test,examples,torch]"
	touch $@

demo: check-java $(VENV)/.installed
	$(PY) -m distkeras.demo

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The documentation site, built strictly (a warning fails); no network needed.
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The suite on one Spark session (and its Connect endpoint); what starts Spark applications
# of its own (clusters, a JAX driver, the tuning notebook) is `make test-apps`, the default
# trainer's accuracy against model.fit per model family `make test-accuracy`, and the core
# paths on PyTorch `make test-torch`, which CI (.ci/run) runs next. Each stays within 15
# minutes on 2 cores.
test: check-java $(VENV)/.installed-test lint docs
	$(PY) -m pytest -q -m "not apps and not torch and not accuracy" --durations=10

test-accuracy: check-java $(VENV)/.installed-test
	$(PY) -m pytest -q -rP -m accuracy --durations=5

test-apps: check-java $(VENV)/.installed-test
	$(PY) -m pytest -q -m apps --durations=10

test-torch: check-java $(VENV)/.installed-torch
	$(PY) -m pytest -q -m torch --durations=5

# The edit-test loop: no end-to-end accuracy runs, notebooks or clusters (tests/README.md).
test-fast: check-java $(VENV)/.installed-test
	$(PY) -m pytest -q -x -m "not slow and not cluster and not accuracy" --durations=5

# The parameter server under 16 clients for five minutes (`make test` runs 5 s of it).
soak: $(VENV)/.installed-test
	DISTKERAS_SOAK_SECONDS=300 $(PY) -m pytest -q tests/test_faults.py -k soak

bench: check-java $(VENV)/.installed-test
	$(PY) bench/data_bench.py
	$(PY) bench/ps_bench.py --sizes 10000000 1000000 100000 --clients 1 2 --repeat 3
	cd bench && $(abspath $(PY)) time_to_accuracy.py

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
