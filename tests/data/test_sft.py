"""Chat-tuning data: the assistant's tokens are the only targets, prompts and padding contribute
exactly zero loss and zero gradient, and bad conversation files are refused with their line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from parcae.data.chat_template import ChatTemplate
from parcae.data.sft import ConversationLoader, read_conversations, render_example
from parcae.errors import DataError
from parcae.model.loss import IGNORE_INDEX, cross_entropy
from tests.infer.conftest import tiny_model

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of Zorland?"},
    {"role": "assistant", "content": "Vexa."},
    {"role": "user", "content": "And of Quibia?"},
    {"role": "assistant", "content": "Morrow."},
]


def _write(path, conversations):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def _variants(count: int) -> list[list[dict]]:
    """`count` distinct conversations (so that both splits get some): CHAT, CHAT's first
    exchange, or that exchange alone, each with a numbered system message."""
    shapes = (CHAT[1:], CHAT[1:3], CHAT[1:2] + CHAT[2:3])
    return [
        [{"role": "system", "content": f"Answer briefly ({i})."}, *shapes[i % 3]]
        for i in range(count)
    ]


def test_only_the_replies_and_their_eos_are_trained(tokenizer):
    ids, trained = render_example(CHAT, ChatTemplate(), tokenizer)
    replies = [i for i, t in zip(ids, trained) if t]
    prompt = [i for i, t in zip(ids, trained) if not t]
    eos = tokenizer.eos_id
    assert tokenizer.decode([i for i in replies if i != eos]) == " Vexa. Morrow."
    assert replies.count(eos) == 2
    assert ids[0] == tokenizer.bos_id and not trained[0]
    assert tokenizer.decode(prompt[1:]).endswith("User: And of Quibia?\n\nAssistant:")


def test_the_prompt_tokens_are_those_chat_sends(tokenizer):
    """The tokens before a reply are the template's prompt for the conversation so far."""
    template = ChatTemplate()
    ids, trained = render_example(CHAT, template, tokenizer)
    first_reply = trained.index(True)
    assert ids[:first_reply] == template.encode(template.render(CHAT[:2]), tokenizer)


def test_masked_positions_contribute_zero_loss_and_zero_gradient(tokenizer, tmp_path):
    path = _write(tmp_path / "chats.jsonl", _variants(24))
    rows = read_conversations(path, ChatTemplate(), tokenizer, seq_len=120, val_fraction=0.3)
    batch = ConversationLoader(rows["train"], batch_size=4).next_batch()
    masked = batch.targets == IGNORE_INDEX
    assert masked.any() and (~masked).any()
    padding = torch.from_numpy(rows["train"].tokens == tokenizer.pad_id)
    assert padding.any() and not torch.from_numpy(rows["train"].trained)[padding].any()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=128)
    logits = model(batch.inputs).logits.detach().flatten(0, 1).requires_grad_()
    loss = cross_entropy(logits, batch.targets.flatten())
    loss.backward()
    grad = logits.grad.view(*batch.targets.shape, -1)
    assert (grad[masked] == 0).all() and (grad[~masked] != 0).any()
    noisy = logits.detach().clone().view(*batch.targets.shape, -1)
    noisy[masked] += 100 * torch.randn_like(noisy[masked])  # whatever the model says there
    assert cross_entropy(noisy.flatten(0, 1), batch.targets.flatten()) == loss
    kept = ~masked.flatten()
    expected = F.cross_entropy(logits[kept], batch.targets.flatten()[kept])
    torch.testing.assert_close(loss, expected)


def test_model_loss_is_the_loss_on_the_replies(tokenizer, tmp_path):
    path = _write(tmp_path / "chats.jsonl", _variants(24))
    rows = read_conversations(path, ChatTemplate(), tokenizer, seq_len=120, val_fraction=0.3)
    batch = ConversationLoader(rows["train"], batch_size=2).next_batch()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=128)
    output = model(batch.inputs, batch.targets)
    kept = batch.targets != IGNORE_INDEX
    expected = F.cross_entropy(output.logits[kept], batch.targets[kept])
    torch.testing.assert_close(output.loss, expected)


def test_conversation_rows_resume_at_their_position(tokenizer, tmp_path):
    path = _write(tmp_path / "chats.jsonl", _variants(24))
    rows = read_conversations(path, ChatTemplate(), tokenizer, seq_len=120, val_fraction=0.3)
    loader = ConversationLoader(rows["train"], batch_size=2, seed=3)
    loader.next_batch()
    state = loader.state_dict()
    expected = loader.next_batch()
    resumed = ConversationLoader(rows["train"], batch_size=2, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch().targets, expected.targets)


BAD_FILES = {
    "not json": ("{messages", "not JSON"),
    "no messages": ('{"text": "hello"}', "messages"),
    "no reply": (json.dumps({"messages": CHAT[:2]}), "no assistant message"),
    "bad role": (json.dumps({"messages": [{"content": "x"}]}), "role"),
    "too long": (
        json.dumps({"messages": [*CHAT[:2], {"role": "assistant", "content": "a " * 300}]}),
        "seq_len",
    ),
}


@pytest.mark.parametrize("line, message", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_conversation_is_refused_with_its_line(line, message, tokenizer, tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"chats.jsonl:2: .*{message}"):
        read_conversations(path, ChatTemplate(), tokenizer, seq_len=120, val_fraction=0.3)


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer, tmp_path):
    """A template that renders the last message differently cannot mark the replies."""
    template = ChatTemplate(
        "{% for m in messages %}{{ m.content }}{% if loop.last %}!{% endif %}{% endfor %}"
    )
    with pytest.raises(Exception, match="prefix"):
        render_example(CHAT, template, tokenizer)
