"""tunesmith: turn a pre-trained LLM into a specialist on your own data, on your own machine."""

import logging

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes (peft does, at every command) tries the `kernels` package,
# which would download a 4-bit matmul from the Hugging Face hub, and warns at WARNING level when it is absent
# (it is never installed here: nothing phones home). bitsandbytes then uses its own CPU kernels, the path
# tests/unit/methods/test_qlora_grads.py checks against a dequantized fp32 reference: the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
