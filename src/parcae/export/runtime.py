"""Generation from an exported ONNX file with onnxruntime (`parcae generate --backend
onnxruntime --onnx OUT.onnx --model PATH`).

The file is the one graph of `parcae.export.onnx` (prefill and decoding). `--model` names the
model it was exported from, for its config and tokenizer only (its weights are not loaded): the
runtime checks, before anything runs, that the file's inputs are the graph it expects for that
model at that loop depth (names, dtypes, the cache shape (Lp + Lc·T + Ld, 1, Hkv, L, hd)), so
a random ONNX model, an export of another model or one of another depth is refused in one line.
The graph is a backend of the one decoder (`parcae.infer.decoder.decode`, `OnnxBackend`), driven
with the same `SamplingParams`, so greedy decoding (and seeded sampling) picks what the PyTorch
`generate` picks. `parcae generate --backend onnxruntime` (`parcae.infer.commands`) builds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from parcae.errors import CheckpointError, MissingDependencyError, PromptError
from parcae.export.onnx import INPUTS, OUTPUTS, cache_shape
from parcae.infer.decoder import decode
from parcae.infer.generate import check_prompt_ids
from parcae.infer.sampling import SamplingParams


def require_onnxruntime(feature: str = "parcae generate --backend onnxruntime"):
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", feature, extra="onnx") from None
    return onnxruntime


class OnnxGenerator:
    """An onnxruntime session over an exported file, checked against `config` at loop depth
    `num_steps` (None: the depth recorded in the file). Batch 1."""

    def __init__(
        self, path: str | os.PathLike, config, num_steps: int | None = None, threads: int = 0
    ) -> None:
        ort = require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(f"{path}: not a loadable ONNX model ({first})") from None
        self.path, self.config = path, config
        self._check_names()
        metadata = self.session.get_modelmeta().custom_metadata_map
        exported_steps = metadata.get("parcae.num_steps")
        if num_steps is None:
            num_steps = int(exported_steps) if exported_steps else 0
        if config.is_looped and exported_steps not in (None, str(num_steps)):
            raise CheckpointError(
                f"{path} was exported at loop depth T={exported_steps}, not {num_steps}: "
                f"export it again with --num-steps {num_steps}"
            )
        for key in ("vocab_size", "context_length"):  # ids beyond the graph's would crash it
            exported = metadata.get(f"parcae.{key}")
            if exported is not None and exported != str(getattr(config, key)):
                raise CheckpointError(
                    f"{path} was exported with {key} {exported}, but the model's config has "
                    f"{getattr(config, key)}: export it again from this model"
                )
        if config.is_looped and num_steps < 1:
            raise CheckpointError(f"{path} was exported from a model without a loop (a GPT)")
        self.num_steps = num_steps if config.is_looped else 0
        self.shape = cache_shape(config, max(self.num_steps, 1))
        self._check_signature()

    def _check_names(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUTS) or outputs != list(OUTPUTS):
            raise CheckpointError(
                f"{self.path} is not a parcae export: inputs {inputs} and outputs {outputs}, "
                f"expected inputs {list(INPUTS)} and outputs {list(OUTPUTS)}"
            )

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        where = f"{self.path} is not a parcae export of this model"
        expected = {
            "input_ids": ("tensor(int64)", [1, None]),
            "position": ("tensor(int64)", [1]),
            "keys": ("tensor(float)", list(self.shape)),
            "values": ("tensor(float)", list(self.shape)),
        }
        depth = f" at T={self.num_steps}" if self.config.is_looped else ""
        for name, (dtype, shape) in expected.items():
            found = inputs[name]
            got = [d if isinstance(d, int) else None for d in found.shape]
            if found.type != dtype or got != shape:
                raise CheckpointError(
                    f"{where}{depth}: input {name} is {found.type} {found.shape}, "
                    f"expected {dtype} {[d if d is not None else 'S' for d in shape]}"
                )

    def run(
        self, ids: list[int], position: int, keys: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One call of the graph: logits (1, S, V) of `ids` at columns position.., and the
        updated cache."""
        return self.session.run(
            None,
            {
                "input_ids": np.asarray([ids], dtype=np.int64),
                "position": np.asarray([position], dtype=np.int64),
                "keys": keys,
                "values": values,
            },
        )

    def empty_cache(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.shape, np.float32), np.zeros(self.shape, np.float32)

    def check_prompt(self, ids: list[int]) -> None:
        check_prompt_ids(ids, self.config)

    def generate(
        self,
        ids: list[int],
        sampling: SamplingParams,
        eos_token_id: int | None = None,
        streamer=None,
    ) -> list[int]:
        """The prompt then up to `sampling.max_new_tokens` new tokens (fewer at EOS or a full
        context): `parcae.infer.decoder.decode` over an `OnnxBackend`, as `parcae.generate`
        for one row (the graph has a fixed depth: no adaptive exit, no stop strings)."""
        if sampling.adaptive is not None:
            raise PromptError(
                "adaptive exits need the PyTorch backend (the graph has a fixed depth)"
            )
        if sampling.stop:
            raise PromptError("stop strings need the PyTorch backend (parcae.generate)")
        self.check_prompt(ids)
        max_new_tokens = min(sampling.max_new_tokens, self.config.context_length - len(ids))
        prompt = torch.tensor([ids])
        if streamer is not None:
            streamer.put(prompt)
        decoded = decode(
            OnnxBackend(self),
            prompt,
            torch.ones_like(prompt, dtype=torch.bool),
            sampling,
            max_new_tokens,
            eos_token_id,
            streamer=streamer,
        )
        return list(ids) + decoded.tokens[0].tolist()


class OnnxBackend:
    """An `OnnxGenerator`'s graph as a decoder backend (`parcae.infer.decoder`): the logits of
    the next column, batch 1, with the cache held as numpy arrays."""

    def __init__(self, generator: OnnxGenerator) -> None:
        self.generator = generator
        self.keys, self.values = generator.empty_cache()
        self.length = 0
        self.steps = torch.tensor([generator.num_steps])

    def _run(self, ids: list[int]) -> tuple[Tensor, Tensor]:
        logits, self.keys, self.values = self.generator.run(
            ids, self.length, self.keys, self.values
        )
        self.length += len(ids)
        vocab = self.generator.config.vocab_size
        return torch.from_numpy(logits[:, -1, :vocab]), self.steps

    def prefill(self, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(ids[0].tolist())

    def step(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(tokens.tolist())
