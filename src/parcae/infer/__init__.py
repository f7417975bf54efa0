"""Inference: generation with the KV cache, sampling and adaptive depth.

- `engine`: the per-step decisions: `sample_next` and the exit rules of adaptive depth
  (`ResidualExit`, `KLExit`);
- `generate`: prompt checks, left padding and the generation loop over `model(..., cache=)`
  (the cache itself, `KVCache` with `CacheSharing`, lives beside the model: `parcae.model.cache`);
- `loading`: `--model PATH` resolution (run directory, saved model, official checkpoint, with
  its tokenizer; imported on its own, as it reads the tokenizer);
- `streaming` and `commands`: `parcae generate`, `parcae chat`, `parcae convert official`.
"""

from parcae.infer.engine import EXIT_CRITERIA, KLExit, ResidualExit, exit_rule, sample_next
from parcae.infer.generate import GenerationStats, generate, prepare_prompts

__all__ = [
    "EXIT_CRITERIA",
    "GenerationStats",
    "KLExit",
    "ResidualExit",
    "exit_rule",
    "generate",
    "prepare_prompts",
    "sample_next",
]
