# The verbs of the book. `make book` sets up, executes every chapter (demo profile) and
# builds the site; `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PROFILE ?= demo
ARGS   ?=
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup run book test bench preflight serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first, as a matched pair of standard PyPI wheels
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name iuxray-book --display-name "Python (iuxray-book)" >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m helpers.run --profile $(PROFILE) $(ARGS)

book: run
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Book: _build/html/index.html  (serve it with: make serve)"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m helpers.bench
	@echo "Wrote benchmarks/results.json; re-run the benchmark page with: $(PY) -m helpers.run 08_benchmarks"

preflight: $(STAMP)
	$(PY) -m helpers.preflight --profile $(PROFILE) $(ARGS)

# Serves the built site on this machine only; `make serve HOST=0.0.0.0` opens it to the network.
serve:
	$(PY) -m http.server --bind $(HOST) --directory _build/html $(PORT)

clean:
	rm -rf _build book/chapters
