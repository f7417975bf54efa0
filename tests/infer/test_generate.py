"""Generation: fixture parity, batched == one by one, seeded sampling, EOS, prompt errors."""

import pytest
import torch

from parcae.errors import PromptError
from parcae.infer.engine import sample_next
from parcae.infer.generate import GenerationStats, generate
from parcae.infer.sampling import SamplingError, SamplingParams


def test_greedy_reproduces_the_official_fixture(official):
    model, expected = official
    prompt = expected["greedy_prompt"]
    new = expected["greedy_tokens"].shape[1] - prompt.shape[1]
    out = generate(model, prompt, new, num_steps=4, temperature=0)
    assert torch.equal(out, expected["greedy_tokens"])


def test_cached_equals_uncached_greedy(parcae_model):
    prompt = [5, 17, 42, 7, 99]
    cached = generate(parcae_model, prompt, 10, num_steps=3, temperature=0)
    uncached = generate(parcae_model, prompt, 10, num_steps=3, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("which", ["parcae_model", "gpt_model"])
def test_batched_prompts_of_different_lengths_match_one_by_one(request, which):
    model = request.getfixturevalue(which)
    prompts = [[3, 14, 15, 92, 65, 35, 89], [27, 18], [100, 200, 31, 4]]
    batched = generate(model, prompts, 8, temperature=0)
    width = max(len(p) for p in prompts)
    for row, prompt in zip(batched, prompts):
        alone = generate(model, prompt, 8, temperature=0)[0]
        assert row[width - len(prompt) :].tolist() == alone.tolist()


def test_left_padded_tensor_with_attention_mask_matches_lists(parcae_model):
    prompts = [[3, 14, 15, 92], [27, 18]]
    ids = torch.tensor([[3, 14, 15, 92], [0, 0, 27, 18]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    from_lists = generate(parcae_model, prompts, 5, temperature=0)
    from_tensor = generate(parcae_model, ids, 5, temperature=0, attention_mask=mask)
    assert torch.equal(from_lists, from_tensor)


def test_seeded_sampling_is_reproducible(parcae_model):
    kwargs = dict(temperature=1.0, top_k=50, top_p=0.9, seed=1234)
    first = generate(parcae_model, [1, 2, 3], 12, **kwargs)
    assert torch.equal(first, generate(parcae_model, [1, 2, 3], 12, **kwargs))
    others = [generate(parcae_model, [1, 2, 3], 12, **{**kwargs, "seed": s}) for s in (1, 2, 3)]
    assert any(not torch.equal(first, other) for other in others)


def test_top_k_one_is_greedy():
    logits = torch.randn(4, 50)
    assert torch.equal(sample_next(logits, SamplingParams(top_k=1), None), logits.argmax(-1))


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, SamplingParams(top_p=0.7), generator)) for _ in range(200)}
    assert draws == {0, 1}


def test_min_p_keeps_the_tokens_near_the_most_likely():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(min_p=0.3)  # keeps p >= 0.15: tokens 0, 1 and 2
    draws = {int(sample_next(logits, params, generator)) for _ in range(300)}
    assert draws == {0, 1, 2}


def test_sampling_params_name_the_field_and_the_reason():
    with pytest.raises(SamplingError, match=r"^min_p must be in \[0, 1\], got 1.5$") as caught:
        SamplingParams(min_p=1.5)
    assert (caught.value.field, caught.value.reason) == ("min_p", "must be in [0, 1]")
    restated = caught.value.restated("--min-p")
    assert isinstance(restated, PromptError) and str(restated).startswith("--min-p must be")


def test_sampling_equals_the_same_keywords(parcae_model):
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_k=20, seed=3)
    by_spec = generate(parcae_model, [1, 2, 3], sampling=params)
    by_keywords = generate(parcae_model, [1, 2, 3], 6, temperature=0.9, top_k=20, seed=3)
    assert torch.equal(by_spec, by_keywords)
    with pytest.raises(PromptError, match="not both"):
        generate(parcae_model, [1, 2, 3], 6, sampling=params)


def test_stop_strings_end_generation_at_the_text(parcae_model):
    class Digits:  # a tokenizer whose token i reads as the digits of i, then a space
        def decode(self, ids):
            return "".join(f"{i} " for i in ids)

    free = generate(parcae_model, [5, 6, 7], 8, temperature=0)[0, 3:].tolist()
    stop = f"{free[1]} "
    params = SamplingParams(max_new_tokens=8, temperature=0, stop=(stop,))
    out = generate(parcae_model, [5, 6, 7], sampling=params, tokenizer=Digits())[0, 3:].tolist()
    assert out == free[: free.index(free[1]) + 1]


def test_eos_stops_rows_and_pads_after(parcae_model):
    out = generate(parcae_model, [5, 6, 7], 6, temperature=0)
    eos = int(out[0, 4])  # the second generated token becomes the EOS
    stats = GenerationStats()
    stopped = generate(
        parcae_model, [5, 6, 7], 6, temperature=0, eos_token_id=eos, pad_token_id=299, stats=stats
    )
    first_eos = (stopped[0, 3:] == eos).nonzero()[0, 0].item()
    assert stopped.shape[1] == 3 + first_eos + 1
    assert stats.new_tokens == [first_eos + 1]


def test_stop_ends_its_rows_and_pads_them(parcae_model):
    prompts = [[5, 6, 7], [8, 9, 10]]
    free = generate(parcae_model, prompts, 6, temperature=0)
    seen = []

    def first_row_after_two(token):
        seen.append(token.tolist())
        return torch.tensor([len(seen) >= 2, False])

    stopped = generate(
        parcae_model, prompts, 6, temperature=0, pad_token_id=299, stop=first_row_after_two
    )
    assert stopped.shape == free.shape
    assert torch.equal(stopped[0, :5], free[0, :5]) and (stopped[0, 5:] == 299).all()
    assert torch.equal(stopped[1], free[1])
    assert len(seen) == 6


def test_streamer_receives_prompt_then_each_token(parcae_model):
    class Recorder:
        def __init__(self):
            self.calls, self.ended = [], False

        def put(self, value):
            self.calls.append(value.tolist())

        def end(self):
            self.ended = True

    recorder = Recorder()
    out = generate(parcae_model, [4, 5], 3, temperature=0, streamer=recorder)
    assert recorder.calls[0] == [[4, 5]]
    assert [call[0] for call in recorder.calls[1:]] == out[0, 2:].tolist()
    assert recorder.ended


def test_generation_stops_when_the_context_is_full(parcae_model):
    context = parcae_model.config.context_length
    out = generate(parcae_model, list(range(context - 3)), 10, temperature=0)
    assert out.shape[1] == context


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], "empty"),
        ([[1, 2], []], "prompt 1 is empty"),
        ([1, 300], "outside the vocabulary"),
        ([-1], "outside the vocabulary"),
        (list(range(64)), "must be shorter"),
        ("hello", "token ids"),
    ],
)
def test_bad_prompts_give_one_clear_error(parcae_model, prompt, message):
    with pytest.raises(PromptError, match=message):
        generate(parcae_model, prompt, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(num_steps=0), "num_steps"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_generation_options_give_one_clear_error(parcae_model, kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(PromptError, match=message):
        generate(parcae_model, [1, 2], **kwargs)
