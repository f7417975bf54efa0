"""Inference: a recurrence-aware KV cache, generation, adaptive depth.

- `cache`: `KVCache` (preallocated keys/values per (layer, loop step)) and `CacheSharing`
  (`full`, `ring:M`, `last:M`, `shared`);
- `engine`: `cached_forward`, the prelude -> loop -> coda pass over a cache, with per-token
  early exit;
- `generate`: prompt checks, left padding, sampling (`LanguageModel.generate` calls it);
- `loading`: `--model PATH` resolution (run directory, saved model, official checkpoint);
- `streaming` and `commands`: `parcae generate`, `parcae chat`, `parcae convert official`.
"""

from parcae.infer.cache import CacheSharing, KVCache
from parcae.infer.engine import EXIT_CRITERIA, ForwardOutput, cached_forward
from parcae.infer.generate import GenerationStats, generate, prepare_prompts, sample_next
from parcae.infer.loading import load_for_inference, resolve_model_dir

__all__ = [
    "EXIT_CRITERIA", "CacheSharing", "ForwardOutput", "GenerationStats", "KVCache",
    "cached_forward", "generate", "load_for_inference", "prepare_prompts", "resolve_model_dir",
    "sample_next",
]
