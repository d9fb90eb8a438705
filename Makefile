# The verbs of the book. `make book` sets up, executes every chapter (demo profile) and
# builds the site; `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.setup-done
LOCK   := requirements.lock
# uv installs the lock (pip is the fallback when uv cannot be installed or fails);
# `make setup INSTALLER=pip` uses pip directly.
INSTALLER ?= uv
PROFILE ?= demo
ARGS   ?=
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup lock run book test bench preflight serve clean

setup: $(STAMP)

# Every package (transitive ones and the set-up tools included) comes from $(LOCK), hash-checked.
# uv itself is installed by pip from its pinned, hashed lines of the lock; `uv pip sync` then
# makes .venv exactly the lock (uv stays: it is in the lock), and the project goes in last
# (editable, no dependencies, built with the locked setuptools).
UV_SETUP = awk '/^uv==/{p=1; print; next} p && /^ *--hash=/{print; next} {p=0}' $(LOCK) \
	  > $(VENV)/uv-requirement.txt \
	&& $(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
	  -r $(VENV)/uv-requirement.txt \
	&& $(UV) pip sync --python $(PY) --require-hashes $(LOCK) \
	&& $(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
PIP_SETUP = $(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK) \
	&& $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

$(STAMP): pyproject.toml $(LOCK)
	@set -e; start=$$(date +%s); how=; \
	echo "setup: installing $(LOCK) into $(VENV) with $(INSTALLER)"; \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	if [ "$(INSTALLER)" = uv ]; then \
	  if { $(UV_SETUP); }; then how=uv; \
	  else echo "setup: uv could not be installed or failed; installing with pip instead"; fi; \
	fi; \
	if [ -z "$$how" ]; then $(PIP_SETUP); how=pip; fi; \
	$(PY) -m ipykernel install --sys-prefix --name iuxray-book --display-name "Python (iuxray-book)" >/dev/null; \
	touch $(STAMP); \
	echo "setup: $$(( $$(date +%s) - start )) s ($$how, $$(grep -c '^[A-Za-z]' $(LOCK)) locked packages)"

# Re-resolve $(LOCK) from pyproject.toml's pins (with .venv's uv) and regenerate environment.yml.
lock: $(STAMP)
	$(PY) tools/lock.py --uv $(UV)

run: $(STAMP)
	$(PY) -m helpers.book.runner --profile $(PROFILE) $(ARGS)

book: run
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Book: _build/html/index.html  (serve it with: make serve)"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m helpers.bench.timing
	@echo "Wrote benchmarks/results.json; re-run the benchmark page with: $(PY) -m helpers.book.runner 08_benchmarks"

preflight: $(STAMP)
	$(PY) -m helpers.bench.preflight --profile $(PROFILE) $(ARGS)

# Serves the built site on this machine only; `make serve HOST=0.0.0.0` opens it to the network.
serve:
	$(PY) -m http.server --bind $(HOST) --directory _build/html $(PORT)

clean:
	rm -rf _build book/chapters
