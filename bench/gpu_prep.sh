#!/usr/bin/env bash
# Run HERE (with network to the package registries) before `bench/gpu_check.sh` runs on a lent GPU machine,
# which has torch, transformers, peft and accelerate but no network. Writes bench/gpu_assets/ (git-ignored;
# the device tool carries it: carry=["bench/gpu_assets"], 64 MiB at most):
#   wheels/     the other packages the check needs, for CPython 3.10-3.13 where compiled (pip picks its own)
#   tokenizer/  the default model's tokenizer (the check's models are random; the 98 MB GGUF does not travel)
#   gsm8k-chat/ bench_sft.py's source rows, a transport copy of ../shared (never committed)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=.venv/bin/pip
A=bench/gpu_assets
rm -rf "$A" && mkdir -p "$A/wheels" "$A/gsm8k-chat"

# Pure-Python (or one wheel for every Python): no dependency resolution, the check installs what it lacks.
$PIP download -q --no-deps -d "$A/wheels" bitsandbytes==0.50.2 trl==1.16.0 platformdirs==4.14.7 \
  tqdm==4.70.1 annotated-types typing-inspection pluggy iniconfig exceptiongroup pygments pytest==9.2.0 \
  psutil==7.2.2 datasketch==2.0.0
for py in 3.10 3.11 3.12 3.13; do  # compiled: one wheel per CPython
  $PIP download -q --no-deps -d "$A/wheels" --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version "$py" "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    PyYAML==6.0.3
done
$PIP download -q --no-deps -d "$A/wheels" pydantic==2.14.3
$PIP download -q --no-deps -d "$A/wheels" --only-binary=:all: --platform manylinux2014_x86_64 \
  --python-version 3.10 tomli  # pytest's TOML reader below 3.11

.venv/bin/python - "$A/tokenizer" <<'EOF'
import sys
from tunesmith.models.loading import load_tokenizer
load_tokenizer("default").save_pretrained(sys.argv[1])
EOF
cp ../shared/datasets/openai-format/gsm8k-chat/{train,validation}.jsonl "$A/gsm8k-chat/"
du -sh "$A"
size=$(du -sm "$A" | cut -f1)
if [ "$size" -gt 62 ]; then echo "gpu_prep: $A is ${size} MiB, over what the device tool carries (64)"; exit 1; fi
