"""`parcae generate`, `parcae chat` and `parcae convert official`."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from parcae.commands import add_model_argument
from parcae.errors import PromptError

if TYPE_CHECKING:
    import torch

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
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--cache-sharing", default="full", help="full (exact), shared, ring:M or last:M"
    )
    parser.add_argument("--device", default="cpu")


def _check_options(args: argparse.Namespace) -> torch.device:
    """Refuse, naming the flag, every generation option that is invalid whatever the model;
    returns the device. Runs before the model is loaded and before anything is printed."""
    from parcae.device import resolve_device
    from parcae.infer.engine import MAX_SEED, check_temperature
    from parcae.model.base import check_num_steps
    from parcae.model.cache import CacheSharing

    device = resolve_device(args.device, "--device")
    check_num_steps(args.num_steps, "--num-steps", PromptError)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise PromptError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    check_temperature(args.temperature, "--temperature")
    if args.top_k is not None and args.top_k < 1:
        raise PromptError(f"--top-k must be a positive integer, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise PromptError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.adaptive is not None and not 0 <= args.adaptive < math.inf:
        raise PromptError(f"--adaptive must be a finite number >= 0, got {args.adaptive}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise PromptError(f"--seed must be in [0, 2**64 - 1], got {args.seed}")
    try:
        CacheSharing.parse(args.cache_sharing)
    except PromptError as error:
        raise PromptError(f"--cache-sharing: {error}") from None
    return device


def _check_room(args: argparse.Namespace, model) -> None:
    """--max-new-tokens must fit in the context beside a prompt of at least one token (its
    default is lowered to fit)."""
    room = model.config.context_length - 1
    if args.max_new_tokens is None:
        args.max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, room)
    elif args.max_new_tokens > room:
        raise PromptError(
            f"--max-new-tokens {args.max_new_tokens} does not fit the model's context of "
            f"{model.config.context_length} tokens beside a prompt: at most {room}"
        )


def _generation_options(args: argparse.Namespace, tokenizer) -> dict:
    return dict(
        num_steps=args.num_steps,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        adaptive=args.adaptive,
        adaptive_criterion=args.adaptive_criterion,
        cache_sharing=args.cache_sharing,
        eos_token_id=tokenizer.eos_id if tokenizer is not None else None,
        **({"compile": True} if getattr(args, "compile", False) else {}),
    )


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


def run_generate(args: argparse.Namespace) -> int:
    """Every argument is checked (options, model, prompt) before anything is printed."""
    from parcae.infer.generate import (
        GenerationStats,
        encode_text_prompt,
        generate,
        prepare_prompts,
    )
    from parcae.infer.loading import load_for_inference
    from parcae.infer.streaming import TextStreamer

    if args.backend == "onnxruntime":
        from parcae.export.runtime import run_generate_onnx

        # this module's checks are handed over (parcae.export does not import parcae.infer's CLI)
        return run_generate_onnx(args, _check_options(args), _parse_ids, _check_room)
    if args.onnx is not None:
        raise PromptError("--onnx is read by --backend onnxruntime only: add it")
    device = _check_options(args)
    if args.prompt == "":
        raise PromptError("--prompt is empty: give some text to continue")
    ids = _parse_ids(args.prompt_ids) if args.prompt is None else None
    model, tokenizer = load_for_inference(args.model, device=device)
    _check_room(args, model)
    if args.prompt is not None:
        ids = encode_text_prompt(args.prompt, tokenizer, not args.no_bos, args.model)
    prepare_prompts(model, ids)  # the prompt's checks, before the prompt is echoed
    options = _generation_options(args, tokenizer)
    streamer = TextStreamer(tokenizer, sys.stdout, options["eos_token_id"])
    if args.prompt is not None:
        sys.stdout.write(args.prompt)
    stats = GenerationStats()
    generate(model, ids, args.max_new_tokens, streamer=streamer, stats=stats, **options)
    if args.adaptive is not None:
        print(adaptive_report(stats, model, args.num_steps), file=sys.stderr)
    return 0


def adaptive_report(stats, model, num_steps: int | None) -> str:
    """The loop steps an adaptive-exit generation used per token, beside its maximum T."""
    most = num_steps or getattr(model.config, "mean_recurrence", 1)
    return f"parcae: adaptive exit: {stats.mean_steps:.2f} loop steps per token (at most {most})"


def _read_lines(stream) -> Iterator[str | None]:
    """The lines of `stream` (a text stream such as sys.stdin), None for a line that does not
    decode in the stream's encoding. Bytes are read from its binary buffer when it has one,
    line by line, so that a bad line loses only itself (a text stream would fail on the whole
    chunk it read ahead)."""
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text-only stream (io.StringIO in tests)
        yield from iter(stream.readline, "")
        return
    encoding = getattr(stream, "encoding", None) or "utf-8"
    for line in iter(raw.readline, b""):
        try:
            yield line.decode(encoding).replace("\r\n", "\n")
        except UnicodeDecodeError:
            yield None


def run_chat(args: argparse.Namespace) -> int:
    """The chat loop (`parcae.infer.chat`) on stdin and stdout, with the model's chat
    template. A line that is not valid text in stdin's encoding is skipped with one line on
    stderr, and the chat goes on."""
    from parcae.data.chat_template import ChatTemplate
    from parcae.infer.chat import chat_loop
    from parcae.infer.loading import load_for_inference, resolve_model_dir

    device = _check_options(args)
    model, tokenizer = load_for_inference(args.model, device=device)
    _check_room(args, model)
    if tokenizer is None:
        raise PromptError(f"{args.model} has no tokenizer.json: chat needs one")
    options = _generation_options(args, tokenizer)
    del options["eos_token_id"]  # the chat loop stops at the tokenizer's EOS
    model_dir = resolve_model_dir(args.model)
    encoding = getattr(sys.stdin, "encoding", None) or "utf-8"

    def bad_line(number: int) -> None:
        print(
            f"parcae: warning: line {number} of stdin is not valid {encoding} text; skipped it",
            file=sys.stderr,
        )

    report = None
    if args.adaptive is not None:

        def report(stats) -> None:
            print(adaptive_report(stats, model, args.num_steps), file=sys.stderr)

    chat_loop(
        model,
        tokenizer,
        ChatTemplate.find(model_dir, model_dir.parent),
        _read_lines(sys.stdin),
        sys.stdout,
        args.max_new_tokens,
        prompt="> " if sys.stdin.isatty() else "",
        on_bad_line=bad_line,
        on_stats=report,
        **options,
    )
    return 0


def run_convert_official(args: argparse.Namespace) -> int:
    from parcae.hf.transformers import convert_official

    out = convert_official(args.src, args.out, args.tokenizer)
    print(f"converted {args.src} -> {out}")
    return 0
