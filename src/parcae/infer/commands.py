"""`parcae generate`, `parcae chat` and `parcae convert official`."""

from __future__ import annotations

import argparse
import sys

from parcae.errors import PromptError


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
    generate.set_defaults(func=run_generate)

    chat = subparsers.add_parser(
        "chat",
        help="an interactive loop: each line you type is "
        "appended to the conversation and continued",
    )
    _add_model_arguments(chat)
    chat.set_defaults(func=run_chat)

    convert = subparsers.add_parser("convert", help="convert checkpoints between formats")
    formats = convert.add_subparsers(dest="source_format", required=True, metavar="FORMAT")
    official = formats.add_parser(
        "official",
        help="an official Parcae checkpoint -> a directory loadable by parcae and by transformers",
    )
    official.add_argument("src", help="official checkpoint directory")
    official.add_argument("out", help="output directory")
    official.add_argument(
        "--tokenizer",
        help="tokenizer.json (or its directory) to save alongside, as a PreTrainedTokenizerFast",
    )
    official.set_defaults(func=run_convert_official)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a run directory, a saved model or an official checkpoint"
    )
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
        "--adaptive-criterion",
        choices=("residual", "kl"),
        default="residual",
        help="exit on the state's relative update (residual) or on the KL "
        "between successive steps' next-token distributions (kl)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--cache-sharing", default="full", help="full (exact), shared, ring:M or last:M"
    )
    parser.add_argument(
        "--no-bos", action="store_true", help="do not start the prompt with the BOS token"
    )
    parser.add_argument("--device", default="cpu")


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
    )


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise PromptError(
            f"--prompt-ids must be integers separated by commas, got {text!r}"
        ) from None


def run_generate(args: argparse.Namespace) -> int:
    from parcae.infer.generate import generate
    from parcae.infer.loading import load_for_inference
    from parcae.infer.streaming import TextStreamer

    model, tokenizer = load_for_inference(args.model, device=args.device)
    if args.prompt is not None:
        if tokenizer is None:
            raise PromptError(
                f"{args.model} has no tokenizer.json, so text prompts cannot be "
                f"encoded: pass --prompt-ids"
            )
        ids = tokenizer.encode(args.prompt)
        if not args.no_bos:
            ids = [tokenizer.bos_id, *ids]
        sys.stdout.write(args.prompt)
    else:
        ids = _parse_ids(args.prompt_ids)
    options = _generation_options(args, tokenizer)
    streamer = TextStreamer(tokenizer, sys.stdout, options["eos_token_id"])
    generate(model, ids, args.max_new_tokens, streamer=streamer, **options)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """Read lines from stdin; each is appended to the transcript, which the model continues.
    `/reset` clears the transcript, `/exit` (or end of input) leaves."""
    from parcae.infer.generate import generate
    from parcae.infer.loading import load_for_inference
    from parcae.infer.streaming import TextStreamer

    model, tokenizer = load_for_inference(args.model, device=args.device)
    if tokenizer is None:
        raise PromptError(f"{args.model} has no tokenizer.json: chat needs one")
    options = _generation_options(args, tokenizer)
    start = [] if args.no_bos else [tokenizer.bos_id]
    history = list(start)
    # keep room for the reply: the oldest tokens of a long transcript are dropped
    budget = max(model.config.context_length - args.max_new_tokens - 1, 1)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = list(start)
            continue
        history += tokenizer.encode(line if line.endswith("\n") else line + "\n")
        history = history[-budget:]
        streamer = TextStreamer(tokenizer, sys.stdout, tokenizer.eos_id)
        generate(model, history, args.max_new_tokens, streamer=streamer, **options)
        history += tokenizer.encode(streamer.text + "\n")


def run_convert_official(args: argparse.Namespace) -> int:
    from parcae.hf.transformers import convert_official

    out = convert_official(args.src, args.out, args.tokenizer)
    print(f"converted {args.src} -> {out}")
    return 0
