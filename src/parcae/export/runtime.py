"""Generation from an exported ONNX file with onnxruntime (`parcae generate --backend
onnxruntime --onnx OUT.onnx --model PATH`).

The file is the one graph of `parcae.export.onnx` (prefill and decoding). `--model` names the
model it was exported from, for its config and tokenizer only (its weights are not loaded): the
runtime checks, before anything runs, that the file's inputs are the graph it expects for that
model at that loop depth (names, dtypes, the cache shape (Lp + Lc·T + Ld, 1, Hkv, L, hd)), so
a random ONNX model, an export of another model or one of another depth is refused in one line.
Sampling reuses `parcae.infer.engine.sample_next` on the logits, so greedy decoding (and seeded
sampling) picks what the PyTorch `generate` picks.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from parcae.errors import CheckpointError, MissingDependencyError, PromptError
from parcae.export.onnx import INPUTS, OUTPUTS, cache_shape
from parcae.infer.engine import check_sampling, check_seed, sample_next
from parcae.infer.generate import check_prompt_ids, encode_text_prompt


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
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        seed: int | None = None,
        streamer=None,
    ) -> list[int]:
        """The prompt then up to `max_new_tokens` new tokens (fewer at EOS or a full
        context), like `parcae.generate` for one row."""
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        check_seed(seed)
        self.check_prompt(ids)
        max_new_tokens = min(max_new_tokens, self.config.context_length - len(ids))
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        if streamer is not None:
            streamer.put(torch.tensor([ids]))
        keys, values = self.empty_cache()
        logits, keys, values = self.run(ids, 0, keys, values)
        sequence = list(ids)
        for index in range(max_new_tokens):
            token = int(
                sample_next(torch.from_numpy(logits[:, -1]), temperature, top_k, top_p, generator)
            )
            sequence.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if token == eos_token_id or index == max_new_tokens - 1:
                break
            logits, keys, values = self.run([token], len(sequence) - 1, keys, values)
        if streamer is not None:
            streamer.end()
        return sequence


def run_generate_onnx(args, device: torch.device, parse_ids, check_room) -> int:
    """`parcae generate --backend onnxruntime`, after `parcae.infer.commands` checked the
    options (`device`); parse_ids(text) and check_room(args, model) are its helpers for
    --prompt-ids and --max-new-tokens. The model's config and tokenizer, the file and the prompt
    are checked before anything is printed."""
    import sys

    from parcae.infer.loading import find_tokenizer, resolve_model_dir
    from parcae.infer.streaming import TextStreamer
    from parcae.model.serialization import read_config

    if args.onnx is None:
        raise PromptError("--backend onnxruntime needs --onnx FILE (from parcae export onnx)")
    if device.type != "cpu":
        raise PromptError(f"--backend onnxruntime runs on the CPU, not --device {args.device}")
    if args.adaptive is not None:
        raise PromptError("--adaptive needs --backend pytorch (the ONNX graph has a fixed depth)")
    if args.cache_sharing != "full":
        raise PromptError("--backend onnxruntime supports only --cache-sharing full")
    if args.prompt == "":
        raise PromptError("--prompt is empty: give some text to continue")
    ids = parse_ids(args.prompt_ids) if args.prompt is None else None
    require_onnxruntime()
    model_dir = resolve_model_dir(args.model)
    config = read_config(model_dir)
    tokenizer = find_tokenizer(model_dir)

    check_room(args, SimpleNamespace(config=config))  # it reads model.config only
    generator = OnnxGenerator(args.onnx, config, args.num_steps)
    if args.prompt is not None:
        ids = encode_text_prompt(args.prompt, tokenizer, not args.no_bos, args.model)
    generator.check_prompt(ids)
    eos = tokenizer.eos_id if tokenizer is not None else None
    streamer = TextStreamer(tokenizer, sys.stdout, eos)
    if args.prompt is not None:
        sys.stdout.write(args.prompt)
    generator.generate(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=eos,
        seed=args.seed,
        streamer=streamer,
    )
    return 0
