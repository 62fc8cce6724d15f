#!/usr/bin/env bash
# One script for a lent GPU machine (one H100/H200, no network; ~8 minutes). Prepare here first:
#     bash bench/gpu_prep.sh          # writes bench/gpu_assets/ (wheels, tokenizer, bench data)
# then run it there through the device tool, carrying the assets:
#     run(command="bash bench/gpu_check.sh", carry=["bench/gpu_assets"], timeout_s=560)
# It reports into $OUT (the device tool's folder; bench/results/gpu here): gpu_check.log, env.txt,
# junit.xml, sft.json/.md. Each part runs under its own timeout and a failing part does not stop the next:
# the first run on a new machine is also the survey of what that machine lacks.
#   1. the machine: GPU, driver, Python, versions of what is installed, what tunesmith cannot import;
#   2. installs the missing packages it has wheels for (bench/gpu_assets/wheels) into .gpu_site;
#   3. the CUDA tests (tests/gpu: bf16 vs fp32, QLoRA gradients on CUDA bitsandbytes, packing with SDPA, the
#      memory planner vs torch.cuda.max_memory_allocated) and the loop's exact-loss and packing tests on CUDA;
#   4. bench/bench_sft.py --model llama-1b: tunesmith vs TRL+PEFT, tokens/s and MFU against the measured
#      bf16 matmul peak. (Serving throughput is not in this first version: it needs fastapi, uvicorn and
#      openai on the machine, which step 1 will show.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
A=bench/gpu_assets
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S) UTC)"; }

step "1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
[ -d "$A/wheels" ] || echo "no $A: run bench/gpu_prep.sh here and carry it"
MISSING=$($PY - "$OUT/env.txt" <<'EOF'
import importlib, platform, sys
import importlib.metadata as md
# import name -> the wheels that provide it and what it needs beyond torch/transformers/peft/accelerate
NEEDS = {
    "pydantic": "pydantic pydantic-core annotated-types typing-inspection", "yaml": "PyYAML",
    "psutil": "psutil", "platformdirs": "platformdirs", "tqdm": "tqdm", "bitsandbytes": "bitsandbytes",
    "trl": "trl", "datasketch": "datasketch", "pytest": "pytest pluggy iniconfig pygments",
}
OTHERS = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "scipy",
          "sklearn", "matplotlib", "pandas", "datasets", "fastapi", "uvicorn", "openai", "optuna"]
lines = [f"python {platform.python_version()}"]
missing = []
for name in [*NEEDS, *OTHERS]:
    try:
        module = importlib.import_module(name)
        lines.append(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001 - a survey: every failure is a finding
        lines.append(f"{name} MISSING ({type(err).__name__}: {err})")
        missing += NEEDS.get(name, "").split()
if "pytest" in missing and sys.version_info < (3, 11):
    missing += ["exceptiongroup", "tomli"]
try:
    import torch
    lines.append(f"cuda {torch.version.cuda}, available {torch.cuda.is_available()}, "
                 f"bf16 {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
except Exception as err:  # noqa: BLE001
    lines.append(f"torch unusable: {err}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print(" ".join(missing))
EOF
)
cat "$OUT/env.txt"

step "2. install what is missing: ${MISSING:-nothing}"
SITE=$PWD/.gpu_site
if [ -n "$MISSING" ]; then
  # --no-deps: only what the survey found missing, never a second torch/transformers over the machine's.
  $PY -m pip install -q --no-index --no-deps --find-links "$A/wheels" --target "$SITE" $MISSING \
    || echo "some wheels did not install (see above)"
fi
export PYTHONPATH="$SITE:$PWD" TUNESMITH_HOME="$PWD/.tunesmith" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step "3. CUDA tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -m "not slow and not chaos and not integration" -rA \
  --junitxml="$OUT/junit.xml" tests/gpu tests/unit/train/test_train_loop.py tests/unit/train/test_packing.py \
  2>&1 | tail -60
echo "pytest exit ${PIPESTATUS[0]}"

step "4. bench_sft.py --model llama-1b (tunesmith vs TRL+PEFT)"
timeout 300 $PY bench/bench_sft.py --model llama-1b --tokenizer "$A/tokenizer" --source "$A/gsm8k-chat" \
  --sides tunesmith,trl --steps 10 --batch 8 --max-length 512 --out "$OUT/sft.json" 2>&1 | tail -40
echo "bench_sft exit ${PIPESTATUS[0]}"
cat "$OUT/sft.md" 2>/dev/null

step "done"
