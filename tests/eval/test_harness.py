"""The lm-evaluation-harness model `parcae` (`parcae.eval.harness`): its three request types
against direct computations with the model's forward and `parcae.generate`, and a whole
`lm_eval.simple_evaluate` run on the local tasks of tests/fixtures/harness/."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

import parcae
from parcae.errors import ConfigError, PromptError
from parcae.eval.core import evaluate_task, prompt_task, score_items
from parcae.eval.harness import ParcaeLM
from parcae.eval.tasks import MultipleChoiceItem, Task, TaskSpec
from tests.conftest import HARNESS_DIR, SHAKESPEARE_DIR

PAIRS = [
    ("When shall we three meet", " again"),
    ("Fair is foul, and foul is fair:\nHover through the fog and filthy", " air."),
    ("Full fathom five thy father", " lies;\nOf his bones are coral made"),
    ("Double, double", " toil and trouble"),
]


def request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(arguments), idx=0)


@torch.no_grad()
def score(model, input_ids: list[int], targets: list[int], num_steps) -> tuple[float, bool]:
    """(Σ log p, greedy?) of `targets`, predicted by the last len(targets) positions of one
    forward over `input_ids`: log_softmax over the first vocab_size logit columns."""
    logits = model(torch.tensor([input_ids]), num_steps=num_steps).logits[0]
    logprobs = logits[-len(targets) :, : model.config.vocab_size].log_softmax(dim=-1)
    target = torch.tensor(targets)
    return (
        float(logprobs.gather(1, target[:, None]).sum()),
        bool((logprobs.argmax(dim=-1) == target).all()),
    )


def direct_loglikelihood(model, tokenizer, context: str, continuation: str, num_steps):
    """The pair scored by hand: BOS, the context's tokens, then the continuation's."""
    context_ids = [tokenizer.bos_id] + tokenizer.encode(context)
    continuation_ids = tokenizer.encode(continuation)
    return score(model, (context_ids + continuation_ids)[:-1], continuation_ids, num_steps)


def direct_generation(model, tokenizer, context: str, stop: str, max_new: int, num_steps):
    """Greedy `parcae.generate` after BOS + context, decoded and cut at EOS and `stop`."""
    prompt = [tokenizer.bos_id] + tokenizer.encode(context)
    out = parcae.generate(
        model, prompt, max_new, num_steps=num_steps, temperature=0, eos_token_id=tokenizer.eos_id
    )
    new = out[0, len(prompt) :].tolist()
    if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    text = tokenizer.decode(new)
    return text.split(stop)[0], text


@pytest.mark.parametrize("num_steps", [2, 5])
def test_loglikelihood_is_the_sum_of_continuation_log_probs(parcae_model, tokenizer, num_steps):
    one_by_one = ParcaeLM(
        model=parcae_model, tokenizer=tokenizer, num_steps=num_steps, batch_size=1
    )
    batched = ParcaeLM(model=parcae_model, tokenizer=tokenizer, num_steps=num_steps, batch_size=3)
    requests = [request("loglikelihood", *pair) for pair in PAIRS]
    alone = one_by_one.loglikelihood(requests, disable_tqdm=True)
    together = batched.loglikelihood(requests, disable_tqdm=True)
    for (context, continuation), (logprob, greedy), (batch_logprob, batch_greedy) in zip(
        PAIRS, alone, together
    ):
        expected, expected_greedy = direct_loglikelihood(
            parcae_model, tokenizer, context, continuation, num_steps
        )
        assert logprob == pytest.approx(expected, rel=1e-5) and logprob < 0
        assert batch_logprob == pytest.approx(logprob, rel=1e-5)
        assert greedy == batch_greedy == expected_greedy
    # the depth matters: at the other depth the first pair scores differently
    other = direct_loglikelihood(parcae_model, tokenizer, *PAIRS[0], {2: 5, 5: 2}[num_steps])
    assert other[0] != pytest.approx(alone[0][0], rel=1e-4)


def test_loglikelihood_is_greedy_when_the_continuation_is_the_argmax(parcae_model, tokenizer):
    lm = ParcaeLM(model=parcae_model, tokenizer=tokenizer, num_steps=3)
    context = "Double, double"
    context_ids = lm.tok_encode(context)
    out = parcae.generate(parcae_model, context_ids, 4, num_steps=3, temperature=0)
    tokens = out[0, len(context_ids) :].tolist()
    # the longest greedy prefix whose text tokenizes back to it (BPE may merge at the boundary)
    greedy_ids = next(
        tokens[:n]
        for n in range(len(tokens), 0, -1)
        if lm.tok_encode(context + tokenizer.decode(tokens[:n])) == context_ids + tokens[:n]
    )
    greedy = tokenizer.decode(greedy_ids)
    other = " and trouble"
    assert tokenizer.encode(other)[0] != greedy_ids[0]
    [(logprob, is_greedy), (other_logprob, other_greedy)] = lm.loglikelihood(
        [request("loglikelihood", context, greedy), request("loglikelihood", context, other)],
        disable_tqdm=True,
    )
    assert is_greedy and not other_greedy
    assert logprob > other_logprob


def test_empty_context_is_conditioned_on_bos(parcae_model, tokenizer):
    lm = ParcaeLM(model=parcae_model, tokenizer=tokenizer, num_steps=3)
    [(logprob, _)] = lm.loglikelihood([request("loglikelihood", "", "Double toil")], True)
    ids = tokenizer.encode("Double toil")
    assert logprob == pytest.approx(
        score(parcae_model, [tokenizer.bos_id] + ids[:-1], ids, 3)[0], rel=1e-5
    )


def test_loglikelihood_rolling_sums_disjoint_windows_of_max_length(parcae_model, tokenizer):
    text = (SHAKESPEARE_DIR / "sonnets_gut.txt").read_text()[5000:5400]
    tokens = tokenizer.encode(text)
    n, window = len(tokens), 32
    assert n > 3 * window and n % window != 0  # full windows and a partial last one
    expected = score(parcae_model, [tokenizer.bos_id] + tokens[: window - 1], tokens[:window], 4)[0]
    for start in range(window, n, window):
        end = min(start + window, n)  # predict tokens[start:end] from the `window` before end
        expected += score(parcae_model, tokens[end - window - 1 : end - 1], tokens[start:end], 4)[0]
    lm = ParcaeLM(model=parcae_model, tokenizer=tokenizer, num_steps=4, max_length=window)
    [total] = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], True)
    assert total == pytest.approx(expected, rel=1e-5)


def test_generate_until_is_parcae_generate_cut_at_the_stop_string(parcae_model, tokenizer):
    # greedy decoding (T=3) of these ends in "\n", in "\n" then more text, at EOS, and at
    # max_gen_toks without a stop (contexts picked for the tiny random model's official init)
    contexts = ["Shall thunder", "or Shall three foul", "All find", "Fair is foul"]
    expected = [direct_generation(parcae_model, tokenizer, c, "\n", 16, 3) for c in contexts]
    assert [len(cut) < len(text) for cut, text in expected] == [True, True, False, False]
    lm = ParcaeLM(model=parcae_model, tokenizer=tokenizer, num_steps=3, batch_size=4)
    kwargs = {"until": ["\n"], "max_gen_toks": 16, "do_sample": False}
    outputs = lm.generate_until([request("generate_until", c, kwargs) for c in contexts], True)
    assert outputs == [cut for cut, _ in expected]
    sampled = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": True, "temperature": 0.7}
    torch.manual_seed(1)
    [output] = lm.generate_until([request("generate_until", contexts[0], sampled)], True)
    torch.manual_seed(1)
    prompt = lm.tok_encode(contexts[0])
    out = parcae.generate(
        parcae_model, prompt, 6, num_steps=3, temperature=0.7, eos_token_id=tokenizer.eos_id
    )
    assert output == tokenizer.decode(out[0, len(prompt) :].tolist()).split("\n\n")[0]


def test_a_gpt_model_is_scored_at_its_fixed_depth(gpt_model, tokenizer):
    lm = ParcaeLM(model=gpt_model, tokenizer=tokenizer, num_steps=5, batch_size=2)
    assert lm.num_steps is None
    results = lm.loglikelihood([request("loglikelihood", *pair) for pair in PAIRS], True)
    for pair, (logprob, greedy) in zip(PAIRS, results):
        assert (logprob, greedy) == pytest.approx(
            direct_loglikelihood(gpt_model, tokenizer, *pair, None), rel=1e-5
        )


def test_string_arguments_are_converted_and_a_model_without_tokenizer_is_refused(
    model_dir, parcae_model, tmp_path
):
    lm = ParcaeLM.create_from_arg_string(
        f"pretrained={model_dir},num_steps=3,max_length=64,add_bos=false",
        {"batch_size": "2", "device": "cpu"},
    )
    assert (lm.num_steps, lm.batch_size, lm.max_length, lm.add_bos) == (3, 2, 64, False)
    assert lm.tok_encode("Double") == lm.tokenizer.encode("Double")
    assert lm.max_gen_toks == 32  # min(256, max_length // 2)
    with pytest.raises(PromptError, match="max_gen_toks 64 leaves no room for a context"):
        lm.generate_until([request("generate_until", "Double", {"max_gen_toks": 64})], True)
    with pytest.raises(PromptError, match="unsupported generation argument.* num_beams"):
        lm.generate_until([request("generate_until", "Double", {"num_beams": 2})], True)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        ParcaeLM(pretrained=model_dir, batch_size="auto")
    with pytest.raises(ConfigError, match=r"max_length must be in \[2, 128\]"):
        ParcaeLM(model=parcae_model, tokenizer=lm.tokenizer, max_length=1000)
    with pytest.raises(ConfigError, match="model= needs tokenizer="):
        ParcaeLM(model=parcae_model)
    parcae_model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ConfigError, match="bare has no tokenizer.json .* pass tokenizer=PATH"):
        ParcaeLM(pretrained=tmp_path / "bare")
    assert ParcaeLM(pretrained=tmp_path / "bare", tokenizer=model_dir / "tokenizer.json")


def simple_evaluate(model_dir, tmp_path, monkeypatch, tasks: list[str]) -> dict:
    """lm_eval's own run of the local `tasks` at T = 3, offline."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    # the tasks' data_files are relative paths, which datasets resolves against the cwd
    monkeypatch.chdir(HARNESS_DIR)
    return lm_eval.simple_evaluate(
        model="parcae",
        model_args=f"pretrained={model_dir},num_steps=3",
        tasks=tasks,
        batch_size=4,
        task_manager=TaskManager(include_path=str(HARNESS_DIR), include_defaults=False),
        bootstrap_iters=0,
    )


def mc_docs() -> list[dict]:
    lines = (HARNESS_DIR / "parcae_mc.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_simple_evaluate_runs_local_tasks(
    model_dir, parcae_model, tokenizer, tmp_path, monkeypatch
):
    results = simple_evaluate(model_dir, tmp_path, monkeypatch, ["parcae_mc", "parcae_gen"])
    docs = mc_docs()
    predictions = []
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = [
            direct_loglikelihood(parcae_model, tokenizer, context, " " + choice, 3)[0]
            for choice in doc["choices"]
        ]
        predictions.append(scores.index(max(scores)))
    logged = [
        max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0])
        for s in sorted(results["samples"]["parcae_mc"], key=lambda s: s["doc_id"])
    ]
    assert logged == predictions
    accuracy = sum(p == doc["gold"] for p, doc in zip(predictions, docs)) / len(docs)
    assert results["results"]["parcae_mc"]["acc,none"] == pytest.approx(accuracy)
    assert 0 < accuracy < 1
    for sample in results["samples"]["parcae_gen"]:
        prompt = sample["doc"]["prompt"]
        expected = direct_generation(parcae_model, tokenizer, prompt, "\n", 12, 3)[0]
        assert sample["resps"] == [[expected]]
    assert "exact_match,none" in results["results"]["parcae_gen"]


def test_without_lm_eval_importing_the_adapter_names_the_extra():
    code = (
        "import sys\nsys.modules['lm_eval'] = None\n"
        "try:\n    import parcae.eval.harness\n"
        "except ImportError as error:\n    print(type(error).__name__, error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == (
        "MissingDependencyError the lm-evaluation-harness adapter needs the optional package "
        "'lm_eval': pip install 'parcae[eval]'"
    )


def test_harness_and_parcae_eval_score_the_same_items_alike(
    model_dir, parcae_model, tokenizer, tmp_path, monkeypatch
):
    """The MC task through lm_eval and through `parcae eval`'s scorer: every option's
    log-likelihood agrees, so both rank options alike (parcae by mean loss per token)."""
    results = simple_evaluate(model_dir, tmp_path, monkeypatch, ["parcae_mc"])
    samples = sorted(results["samples"]["parcae_mc"], key=lambda s: s["doc_id"])
    docs = mc_docs()
    # lm_eval scores " " + choice after the query: the space is part of each choice here too
    items = [
        MultipleChoiceItem(
            f"Question: {d['question']}\nAnswer:", tuple(" " + c for c in d["choices"]), d["gold"]
        )
        for d in docs
    ]
    spec = TaskSpec("parcae_mc", "multiple_choice", HARNESS_DIR / "parcae_mc.jsonl", 0, "")
    task = Task(spec, items)
    prompted = prompt_task(task, tokenizer, parcae_model.config.context_length)
    loss, _ = score_items(parcae_model, prompted, [3], 4, tokenizer.pad_id)[3]
    counts = [len(s.tokens) - s.start for item in prompted for s in item.sequences]
    ours = (-loss * torch.tensor(counts, dtype=torch.float64)).tolist()
    theirs = [resp[0] for sample in samples for resp in sample["filtered_resps"]]
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-4)
    harness_mean_rule = [
        max(
            range(len(s["filtered_resps"])),
            key=lambda i: s["filtered_resps"][i][0] / len(tokenizer.encode(" " + d["choices"][i])),
        )
        for s, d in zip(samples, docs)
    ]
    accuracy = sum(p == d["gold"] for p, d in zip(harness_mean_rule, docs)) / len(docs)
    [result] = evaluate_task(parcae_model, tokenizer, task, [3], progress=False)
    assert result.accuracy == accuracy
