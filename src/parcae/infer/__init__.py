"""Inference: generation with the KV cache, sampling and adaptive depth.

- `sampling`: `SamplingParams`, the one sampling spec every front end takes, checked once
  (`SamplingError` names the field and the reason);
- `engine`: the per-step decisions: `sample_next` and the exit rules of adaptive depth
  (`ResidualExit`, `KLExit`);
- `decoder`: the one decoder: prefill, the next-column step (the fast step or the general
  forward), per-row sampling and the decode loop, driven by `generate`, the continuous batcher
  (`parcae.serve`) and the onnxruntime backend (`parcae.export.runtime`);
- `generate`: prompt checks, left padding and `generate` (the cache itself, `KVCache` with
  `CacheSharing`, lives beside the model: `parcae.model.cache`);
- `chat`: the chat session of `parcae chat` (messages, template, replies) on any streams;
- `loading`: `--model PATH` resolution (run directory, saved model, official checkpoint, with
  its tokenizer; imported on its own, as it reads the tokenizer);
- `streaming` and `commands`: `parcae generate`, `parcae chat`, `parcae convert official`.
"""

from parcae.infer.engine import EXIT_CRITERIA, KLExit, ResidualExit, exit_rule, sample_next
from parcae.infer.generate import GenerationStats, generate, prepare_prompts
from parcae.infer.sampling import SamplingError, SamplingParams

__all__ = [
    "EXIT_CRITERIA",
    "GenerationStats",
    "KLExit",
    "ResidualExit",
    "SamplingError",
    "SamplingParams",
    "exit_rule",
    "generate",
    "prepare_prompts",
    "sample_next",
]
