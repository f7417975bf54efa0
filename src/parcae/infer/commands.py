"""`parcae generate`, `parcae chat` and `parcae convert official`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from parcae.commands import add_model_argument
from parcae.errors import PromptError

if TYPE_CHECKING:
    import torch

    from parcae.infer.sampling import SamplingParams

DEFAULT_MAX_NEW_TOKENS = 200


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    generate = subparsers.add_parser("generate", help="continue a prompt, streaming to stdout")
    _add_model_arguments(generate)
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (encoded with the model's tokenizer)")
    prompt.add_argument(
        "--prompt-ids",
        help="prompt as comma-separated token ids (for checkpoints without a tokenizer)",
    )
    generate.add_argument(
        "--backend",
        choices=("pytorch", "onnxruntime"),
        default="pytorch",
        help="run the model in PyTorch, or run the --onnx file of parcae export onnx with "
        "onnxruntime (--model then gives its config and tokenizer)",
    )
    generate.add_argument("--onnx", default=None, help="the .onnx file for --backend onnxruntime")
    generate.add_argument(
        "--no-bos", action="store_true", help="do not start the prompt with the BOS token"
    )
    generate.set_defaults(func=run_generate)

    chat = subparsers.add_parser(
        "chat",
        help="chat with a model: each line you type is a message, answered with the "
        "model's chat template (/reset starts over, /exit leaves)",
    )
    _add_model_arguments(chat)
    chat.set_defaults(func=run_chat)

    convert = subparsers.add_parser("convert", help="convert checkpoints between formats")
    formats = convert.add_subparsers(dest="source_format", required=True, metavar="FORMAT")
    official = formats.add_parser(
        "official",
        help="an official Parcae checkpoint -> a directory loadable by parcae and by transformers",
    )
    official.add_argument(
        "src", help="official checkpoint directory, or a Hub repo org/name[@revision]"
    )
    official.add_argument(
        "out",
        help="output directory: must not exist or be empty (it is written beside, as a "
        "temporary directory, and renamed into place once complete)",
    )
    official.add_argument(
        "--tokenizer",
        help="tokenizer.json (or its directory) to save alongside, as a PreTrainedTokenizerFast",
    )
    official.set_defaults(func=run_convert_official)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="loop steps T (default: the model's mean recurrence)",
    )
    parser.add_argument(
        "--adaptive",
        type=float,
        default=None,
        metavar="EPS",
        help="per-token early exit once ||h_t+1 - h_t|| / ||h_t|| < EPS (T stays the maximum)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the single-token decode step with torch.compile (a C++ compiler on CPU; "
        "compiling takes seconds to a minute, once per process)",
    )
    parser.add_argument(
        "--adaptive-criterion",
        choices=("residual", "kl"),
        default="residual",
        help="exit on the state's relative update (residual) or on the KL "
        "between successive steps' next-token distributions (kl)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"at most this many new tokens (default {DEFAULT_MAX_NEW_TOKENS}, fewer if the "
        "context is smaller); generation also stops when the context is full",
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument(
        "--min-p",
        type=float,
        default=None,
        help="keep only tokens with probability >= MIN_P times the most likely one's",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--cache-sharing", default="full", help="full (exact), shared, ring:M or last:M"
    )
    parser.add_argument("--device", default="cpu")


FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "seed": "--seed",
    "num_steps": "--num-steps",
    "adaptive": "--adaptive",
    "adaptive_criterion": "--adaptive-criterion",
}  # SamplingParams field -> its flag


def _check_options(args: argparse.Namespace) -> tuple[torch.device, SamplingParams]:
    """Refuse, naming the flag, every generation option that is invalid whatever the model;
    returns the device and the sampling spec (max_new_tokens fitted later by `_fit`). Runs
    before the model is loaded and before anything is printed."""
    from parcae.device import resolve_device
    from parcae.infer.sampling import SamplingParams, restate
    from parcae.model.cache import CacheSharing

    device = resolve_device(args.device, "--device")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise PromptError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    params = restate(
        FLAGS,
        lambda: SamplingParams(
            max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            seed=args.seed,
            num_steps=args.num_steps,
            adaptive=args.adaptive,
            adaptive_criterion=args.adaptive_criterion,
        ),
    )
    try:
        CacheSharing.parse(args.cache_sharing)
    except PromptError as error:
        raise PromptError(f"--cache-sharing: {error}") from None
    return device, params


def _fit(args: argparse.Namespace, params: SamplingParams, config) -> SamplingParams:
    """--max-new-tokens must fit in the context beside a prompt of at least one token (its
    default is lowered to fit)."""
    room = config.context_length - 1
    if args.max_new_tokens is None:
        return params.replace(max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, room))
    if args.max_new_tokens > room:
        raise PromptError(
            f"--max-new-tokens {args.max_new_tokens} does not fit the model's context of "
            f"{config.context_length} tokens beside a prompt: at most {room}"
        )
    return params


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise PromptError(
            f"--prompt-ids must be integers separated by commas, got {text!r}"
        ) from None
    if not ids:
        raise PromptError("--prompt-ids is empty: give at least one token id")
    return ids


def _check_backend(args: argparse.Namespace, params: SamplingParams, device) -> None:
    """The options --backend onnxruntime cannot honour (the graph has a fixed depth and
    layout and runs on the CPU)."""
    if args.backend != "onnxruntime":
        if args.onnx is not None:
            raise PromptError("--onnx is read by --backend onnxruntime only: add it")
        return
    if args.onnx is None:
        raise PromptError("--backend onnxruntime needs --onnx FILE (from parcae export onnx)")
    if device.type != "cpu":
        raise PromptError(f"--backend onnxruntime runs on the CPU, not --device {args.device}")
    if params.adaptive is not None:
        raise PromptError("--adaptive needs --backend pytorch (the ONNX graph has a fixed depth)")
    if args.cache_sharing != "full":
        raise PromptError("--backend onnxruntime supports only --cache-sharing full")


def run_generate(args: argparse.Namespace) -> int:
    """Every argument is checked (options, model or ONNX file, prompt) before anything is
    printed; both backends take the same `SamplingParams`."""
    from parcae.infer.generate import (
        GenerationStats,
        check_prompt_ids,
        encode_text_prompt,
        generate,
    )
    from parcae.infer.loading import find_tokenizer, load_for_inference, resolve_model_dir
    from parcae.infer.streaming import TextStreamer

    device, params = _check_options(args)
    _check_backend(args, params, device)
    if args.prompt == "":
        raise PromptError("--prompt is empty: give some text to continue")
    ids = _parse_ids(args.prompt_ids) if args.prompt is None else None
    stats = GenerationStats()
    if args.backend == "onnxruntime":
        from parcae.export.runtime import OnnxGenerator, require_onnxruntime
        from parcae.model.serialization import read_config

        require_onnxruntime()
        model_dir = resolve_model_dir(args.model)
        config, tokenizer = read_config(model_dir), find_tokenizer(model_dir)
        params = _fit(args, params, config)
        runner = OnnxGenerator(args.onnx, config, args.num_steps)

        def run(ids, eos, streamer) -> None:
            runner.generate(ids, params, eos_token_id=eos, streamer=streamer)

    else:
        model, tokenizer = load_for_inference(args.model, device=device)
        config = model.config
        params = _fit(args, params, config)

        def run(ids, eos, streamer) -> None:
            generate(
                model,
                ids,
                sampling=params,
                eos_token_id=eos,
                streamer=streamer,
                stats=stats,
                cache_sharing=args.cache_sharing,
                compile=args.compile,
            )

    if args.prompt is not None:
        ids = encode_text_prompt(args.prompt, tokenizer, not args.no_bos, args.model)
    check_prompt_ids(ids, config)  # the prompt's checks, before the prompt is echoed
    eos = tokenizer.eos_id if tokenizer is not None else None
    streamer = TextStreamer(tokenizer, sys.stdout, eos)
    if args.prompt is not None:
        sys.stdout.write(args.prompt)
    run(ids, eos, streamer)
    if args.adaptive is not None:
        most = params.num_steps or config.default_depth or 1
        print(stats.adaptive_report(most), file=sys.stderr)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """The chat session (`parcae.infer.chat.chat_session`) on stdin, stdout and stderr, with
    the model's chat template."""
    from parcae.data.chat_template import ChatTemplate
    from parcae.infer.chat import chat_session
    from parcae.infer.loading import load_for_inference, resolve_model_dir

    device, params = _check_options(args)
    model, tokenizer = load_for_inference(args.model, device=device)
    params = _fit(args, params, model.config)
    if tokenizer is None:
        raise PromptError(f"{args.model} has no tokenizer.json: chat needs one")
    model_dir = resolve_model_dir(args.model)
    chat_session(
        model,
        tokenizer,
        ChatTemplate.find(model_dir, model_dir.parent),
        params,
        sys.stdin,
        sys.stdout,
        sys.stderr,
        cache_sharing=args.cache_sharing,
        compile=args.compile,
    )
    return 0


def run_convert_official(args: argparse.Namespace) -> int:
    from parcae.hf.transformers import convert_official

    out = convert_official(args.src, args.out, args.tokenizer)
    print(f"converted {args.src} -> {out}")
    return 0
