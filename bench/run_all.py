"""`make bench`: every benchmark in one invocation; each writes JSON under bench/results/ and prints a table.

    python -m bench.run_all            # data tools (1M rows), serving, int8 export, LoRA SFT and DPO vs TRL
    BENCH_ROWS=100000 python -m bench.run_all
Speed goals live here, never in tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_data_tools.py", "--rows", os.environ.get("BENCH_ROWS", "1000000")],
    ["bench_serve.py"],
    ["bench_int8.py"],
    ["bench_sft.py"],  # tunesmith vs TRL SFTTrainer + PEFT, LoRA SFT on the default model
    ["bench_dpo.py"],  # tunesmith vs TRL DPOTrainer + PEFT, LoRA DPO (and SFT memory yardstick)
]


def main() -> int:
    failed = []
    for script, *args in BENCHES:
        path = HERE / script
        if not path.exists():
            continue
        print(f"== {script} {' '.join(args)}", flush=True)
        if subprocess.call([sys.executable, str(path), *args]) != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
