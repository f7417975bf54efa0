"""Weight-only quantization of a saved model (`parcae quantize`): int8 and int4 with group
scales through torchao (the optional extra `quant`). Modules: `schemes` (what is quantized, the
saved format, loading), `commands` (the CLI)."""

from parcae.quant.schemes import SCHEMES, Quantization, quantize_model, register

__all__ = ["SCHEMES", "Quantization", "quantize_model", "register"]
