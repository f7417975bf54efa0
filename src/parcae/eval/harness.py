"""The model `parcae` of EleutherAI's lm-evaluation-harness (`lm_eval`, the `eval` extra).

Importing this module registers `ParcaeLM` under the name `parcae` in lm_eval's model registry:

    import lm_eval
    import parcae.eval.harness  # noqa: F401  (registers "parcae")

    results = lm_eval.simple_evaluate(
        model="parcae", model_args="pretrained=runs/x,num_steps=8", tasks=["hellaswag"]
    )

or pass an instance: `lm_eval.simple_evaluate(model=ParcaeLM(model=model, tokenizer=tok), ...)`.

lm_eval (0.4.13) does not discover external models: no entry points, its registry holds the
models of `lm_eval.models` and whatever the running process registered. So the `lm-eval` command
does not know `parcae`; run lm_eval's CLI in a process that has imported this module:

    python -c "import parcae.eval.harness, lm_eval.__main__ as m; m.cli_evaluate()" \
        run --model parcae --model_args pretrained=runs/x num_steps=8 --tasks hellaswag --device cpu

(the CLI's default device is cuda:0).

The three request types:
- `loglikelihood`: (context, continuation) -> (Σ log p(continuation tokens | preceding tokens),
  whether greedy decoding reproduces the continuation);
- `loglikelihood_rolling`: a whole document's log-likelihood, in disjoint windows of max_length
  tokens, the first token predicted from BOS;
- `generate_until`: a continuation by `parcae.generate` on the KV cache, cut at the first stop
  string or EOS.
Log-probabilities are log_softmax over the first `config.vocab_size` logit columns (the others
pad the head). A looped model runs `num_steps` loop steps for every token.
"""

from __future__ import annotations

import itertools
import json
import os

import torch
from tqdm import tqdm

from parcae.data.tokenizer import Tokenizer
from parcae.errors import ConfigError, MissingDependencyError, PromptError
from parcae.infer.generate import generate
from parcae.infer.loading import load_for_inference
from parcae.model.base import LanguageModel

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as error:
    raise MissingDependencyError(
        "lm_eval", "the lm-evaluation-harness adapter", extra="eval"
    ) from error


@register_model("parcae")
class ParcaeLM(TemplateLM):
    """A parcae model (Parcae or GPT) and its tokenizer as an lm_eval language model.

    From a path: `pretrained` is a run directory, a saved model or an official checkpoint
    (`parcae.infer.loading.load_for_inference`), loaded onto `device` (default cpu) in `dtype`
    (a torch dtype or its name, e.g. "bfloat16"; default as saved). Or from objects: `model` (a
    `LanguageModel`, put in eval mode and moved to `device` if given) and `tokenizer`.
    `tokenizer` may also be a `tokenizer.json` path; by default it is the one saved beside
    `pretrained`. Values may be strings, as lm_eval's `model_args="k=v,..."` gives them.

    num_steps: loop depth T of every token (default the model's `default_depth`, μ_rec; a GPT
    has none). batch_size: sequences per forward. max_length: tokens per forward (default the
    model's context_length). max_gen_toks: new tokens of a generation when its request does not
    say (default min(256, max_length // 2)). add_bos: begin every context with BOS.
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        model: LanguageModel | None = None,
        tokenizer: Tokenizer | str | os.PathLike | None = None,
        num_steps: int | str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | str = 8,
        max_length: int | str | None = None,
        max_gen_toks: int | str | None = None,
        add_bos: bool | str = True,
    ) -> None:
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ConfigError("give the model either as pretrained=PATH or as model=")
        num_steps = None if num_steps is None else _as_int(num_steps, "num_steps")
        max_length = None if max_length is None else _as_int(max_length, "max_length")
        self.batch_size = _as_int(batch_size, "batch_size")
        self.add_bos = _as_bool(add_bos, "add_bos")
        if pretrained is not None:
            model, saved_tokenizer = load_for_inference(
                pretrained, device or "cpu", _as_dtype(dtype)
            )
            tokenizer = saved_tokenizer if tokenizer is None else tokenizer
            if tokenizer is None:
                raise ConfigError(
                    f"{pretrained} has no tokenizer.json (beside the model or in its run "
                    f"directory): pass tokenizer=PATH to one"
                )
        elif device is not None:
            model = model.to(device)
        if tokenizer is None:
            raise ConfigError("model= needs tokenizer= (a Tokenizer or a tokenizer.json path)")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = Tokenizer.load(tokenizer)
        config = model.config
        if tokenizer.vocab_size > config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                f"vocabulary of {config.vocab_size}"
            )
        self.max_length = config.context_length if max_length is None else max_length
        if not 2 <= self.max_length <= config.context_length:
            raise ConfigError(
                f"max_length must be in [2, {config.context_length}] (the model's "
                f"context_length), got {self.max_length}"
            )
        self.max_gen_toks = (
            min(256, self.max_length // 2)
            if max_gen_toks is None
            else _as_int(max_gen_toks, "max_gen_toks")
        )
        if self.max_gen_toks >= self.max_length:
            raise ConfigError(
                f"max_gen_toks {self.max_gen_toks} leaves no room for a context in max_length "
                f"{self.max_length}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._device = next(model.parameters()).device
        depth = config.default_depth  # None for a GPT, which ignores num_steps
        self.num_steps = depth if depth is None or num_steps is None else num_steps

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and a rolling document's first token) is conditioned on."""
        return self.tokenizer.bos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list:
        """Token ids of `string`, after BOS when `add_special_tokens` (default: add_bos)."""
        add = self.add_bos if add_special_tokens is None else add_special_tokens
        return [self.tokenizer.bos_id] * add + self.tokenizer.encode(string)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list:
        """(log p, is_greedy) per request (key, context ids, continuation ids); key is the
        (context, continuation) strings for lm_eval's response cache, or None.

        A request's input is x = (context + continuation)[-(max_length + 1):-1] (truncated from
        the left), so that position i predicts token i + 1 and the last len(continuation)
        positions predict the continuation c: log p = Σ_j log_softmax(logits[j, :vocab_size])[c_j],
        greedy when every argmax equals c_j. Requests are sorted longest first and batched
        right-padded: the model is causal, so padding after a row changes none of its logits.
        """
        results = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        vocab = self.model.config.vocab_size
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            rows = []
            for i in batch:
                _, context, continuation = requests[i]
                if len(continuation) > self.max_length:
                    raise PromptError(
                        f"a continuation of {len(continuation)} tokens does not fit in "
                        f"max_length {self.max_length}"
                    )
                rows.append((context + continuation)[-(self.max_length + 1) : -1])
            ids = torch.full((len(rows), len(rows[0])), self.tokenizer.pad_id, dtype=torch.long)
            for b, row in enumerate(rows):
                ids[b, : len(row)] = torch.tensor(row)
            logits = self.model(ids.to(self.device), num_steps=self.num_steps).logits
            for b, i in enumerate(batch):
                key, _, continuation = requests[i]
                end = len(rows[b])
                logprobs = logits[b, end - len(continuation) : end, :vocab].log_softmax(dim=-1)
                target = torch.tensor(continuation, device=self.device)
                answer = (
                    float(logprobs.gather(1, target[:, None]).sum()),
                    bool((logprobs.argmax(dim=-1) == target).all()),
                )
                results[i] = answer
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                bar.update(1)
        bar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Σ log p of each document's tokens t (no BOS added to the text), every token predicted
        once, in windows of L = max_length: the first forward runs on [BOS, t_0 .. t_{L-2}] and
        predicts t_0 .. t_{L-1}; each next one predicts the following L tokens t_p .. t_{p+L-1}
        from t_{p-1} .. t_{p+L-2}; the last, predicting n <= L tokens, runs on the L tokens
        before the document's end (lm_eval's rolling windows, context_len 1)."""
        windows, owners = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(text, add_special_tokens=False)
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        for index, (logprob, _) in zip(owners, scores):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation of its context, cut before the first of its `until`
        strings (and before EOS).

        gen_kwargs: until (a string or list), max_gen_toks (default the constructor's), and
        do_sample / temperature (greedy unless do_sample with a temperature > 0, default 1),
        top_k, top_p; anything else is refused (`PromptError`). As in lm_eval's own models, the
        context keeps its last max_length - max_gen_toks tokens, so max_gen_toks must be below
        max_length. Requests with equal gen_kwargs are batched (longest context first);
        generation ends once every row has produced a stop string or EOS.
        """
        prompts = [self.tok_encode(req.args[0]) or [self.prefix_token_id] for req in requests]
        keys = [json.dumps(req.args[1], sort_keys=True, default=str) for req in requests]
        order = sorted(range(len(requests)), key=lambda i: (keys[i], -len(prompts[i])))
        results = [None] * len(requests)
        bar = tqdm(
            total=len(requests), disable=disable_tqdm, desc="Running generate_until requests"
        )
        for _, group in itertools.groupby(order, key=lambda i: keys[i]):
            group = list(group)
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                gen_kwargs = requests[batch[0]].args[1]
                texts = self._generate([prompts[i] for i in batch], gen_kwargs)
                for i, text in zip(batch, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(1)
        bar.close()
        return results

    def _generate(self, prompts: list[list[int]], gen_kwargs: dict) -> list[str]:
        """Texts generated after `prompts` (one batch) under one request's gen_kwargs."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = _as_int(kwargs.pop("max_gen_toks", self.max_gen_toks), "max_gen_toks")
        if max_new >= self.max_length:
            raise PromptError(
                f"max_gen_toks {max_new} leaves no room for a context in max_length "
                f"{self.max_length}: lower it (e.g. simple_evaluate(gen_kwargs='max_gen_toks=N'))"
            )
        do_sample = kwargs.pop("do_sample", None)
        temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        temperature = temperature if do_sample is not False else 0.0
        top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        if kwargs:
            raise PromptError(
                f"unsupported generation argument(s) {', '.join(sorted(kwargs))}; parcae takes "
                f"until, max_gen_toks, do_sample, temperature, top_k, top_p"
            )
        watch = _StopWatch(self.tokenizer, until, len(prompts))
        generate(
            self.model,
            [prompt[-(self.max_length - max_new) :] for prompt in prompts],
            max_new,
            num_steps=self.num_steps,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=self.tokenizer.pad_id,
            stop=watch,
        )
        return [_cut(self.tokenizer.decode(tokens), until) for tokens in watch.rows]


class _StopWatch:
    """The `stop` of `parcae.generate`: keeps each row's new tokens until the row produces EOS
    (not kept) or one of the stop strings, and reports the rows that are done."""

    def __init__(self, tokenizer: Tokenizer, until: list[str], batch: int) -> None:
        self.tokenizer, self.until = tokenizer, until
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.done = [False] * batch

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: one step's new tokens (B,) -> bool (B,) rows done."""
        for b, token in enumerate(tokens.tolist()):
            if self.done[b]:
                continue
            if token == self.tokenizer.eos_id:
                self.done[b] = True
                continue
            self.rows[b].append(token)
            text = self.tokenizer.decode(self.rows[b])
            self.done[b] = any(stop and stop in text for stop in self.until)
        return torch.tensor(self.done)


def _cut(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of any non-empty string of `until`."""
    ends = [text.find(stop) for stop in until if stop and stop in text]
    return text[: min(ends)] if ends else text


def _as_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1 or number != float(value):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return number


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "false", "0"):
        return str(value).lower() in ("true", "1")
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _as_dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must name a torch dtype (e.g. bfloat16), got {value!r}")
    return dtype
