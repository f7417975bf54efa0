"""Tokenizer: training, round trip, special tokens, byte lengths, save/load and hashing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from parcae.data.tokenizer import BOS, EOS, PAD, Tokenizer
from parcae.errors import ConfigError, DataError
from tests.conftest import OFFICIAL_TOKENIZER, SHAKESPEARE_DIR

TEXT = st.text(st.characters(codec="utf-8"), max_size=200)


def test_special_tokens_have_fixed_ids(tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2)
    assert tokenizer.vocab_size == 400


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_round_trip_on_arbitrary_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_token_byte_lengths_sum_to_utf8_length(tokenizer, text):
    lengths = tokenizer.token_byte_lengths()
    assert lengths[tokenizer.encode(text)].sum() == len(text.encode("utf-8"))


def test_special_tokens_have_zero_bytes(tokenizer):
    lengths = tokenizer.token_byte_lengths()
    assert lengths.shape == (tokenizer.vocab_size,)
    assert lengths[[0, 1, 2]].tolist() == [0, 0, 0]
    assert (lengths[3:] >= 1).all()


def test_special_token_text_is_encoded_as_ordinary_text(tokenizer):
    ids = tokenizer.encode(f"a{BOS}b{EOS}{PAD}")
    assert not {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id} & set(ids)
    assert tokenizer.decode(ids) == f"a{BOS}b{EOS}{PAD}"


def test_encode_batch_matches_encode(tokenizer):
    texts = ["To be, or not to be", "", "that is the question 1234567"]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]


def test_save_load_keeps_encoding_and_hash(tokenizer, tmp_path):
    file = tokenizer.save(tmp_path)
    for path in (tmp_path, file):
        loaded = Tokenizer.load(path)
        assert loaded.hash == tokenizer.hash
        assert loaded.encode("Wherefore art thou") == tokenizer.encode("Wherefore art thou")


def test_training_is_deterministic(plays_dir):
    texts = [path.read_text() for path in sorted(plays_dir.iterdir())][:2]
    assert Tokenizer.train(texts, 300).hash == Tokenizer.train(texts, 300).hash


def test_hash_differs_between_vocab_sizes(plays_dir, tokenizer):
    texts = [path.read_text() for path in sorted(plays_dir.iterdir())]
    assert Tokenizer.train(texts, 300).hash != tokenizer.hash


def test_loads_a_foreign_tokenizer_json_with_the_parcae_specials(tmp_path):
    backend = HFTokenizer(
        models.BPE(
            vocab={"<|bos|>": 0, "<|eos|>": 1, "<|pad|>": 2, "a": 3, "b": 4, "ab": 5},
            merges=[("a", "b")],
        )
    )
    backend.add_special_tokens(["<|bos|>", "<|eos|>", "<|pad|>"])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path)
    assert loaded.encode("abab") == [5, 5]
    assert loaded.token_byte_lengths().tolist() == [0, 0, 0, 1, 1, 2]


def test_load_refuses_a_tokenizer_without_the_specials(tmp_path):
    HFTokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="lacks the special token"):
        Tokenizer.load(tmp_path)


def test_load_refuses_a_missing_path(tmp_path):
    with pytest.raises(DataError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")


def test_load_refuses_a_malformed_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("vocab_size", [100, 258, 1_048_577, 10**9])
def test_train_refuses_a_vocab_outside_the_byte_alphabet_and_the_bound(vocab_size):
    """Below 259 the bytes do not fit; far above, the BPE trainer aborted the process trying to
    reserve memory (70 GB at 1e9) instead of raising."""
    with pytest.raises(ConfigError, match="between 259 .* and 1,048,576"):
        Tokenizer.train(["abc"], vocab_size)


def test_train_refuses_empty_input():
    with pytest.raises(DataError, match="empty input"):
        Tokenizer.train([], 300)


def test_bytes_per_token_is_bytes_over_tokens(tokenizer):
    text = "Fair is foul, and foul is fair"
    assert tokenizer.bytes_per_token([text]) == len(text.encode()) / len(tokenizer.encode(text))


def _foreign_backend(specials: list[str]) -> HFTokenizer:
    vocab = {name: index for index, name in enumerate(specials)}
    vocab |= {"a": len(vocab), "b": len(vocab) + 1, "ab": len(vocab) + 2}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.add_special_tokens(specials)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def test_released_layout_reads_specials_and_chat_template_from_its_config():
    loaded = Tokenizer.load(OFFICIAL_TOKENIZER)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 2)
    assert loaded.vocab_size == 512
    config = json.loads((OFFICIAL_TOKENIZER / "tokenizer_config.json").read_text())
    assert loaded.chat_template == config["chat_template"]


def test_released_layout_counts_every_byte_once_and_specials_as_none():
    loaded = Tokenizer.load(OFFICIAL_TOKENIZER)
    lengths = loaded.token_byte_lengths()
    assert lengths[[0, 1, 2]].tolist() == [0, 0, 0]
    text = (SHAKESPEARE_DIR / "sonnets_gut.txt").read_text()[:5000] + " naïve — 東京 🙂"
    ids = loaded.encode(text)
    assert int(lengths[ids].sum()) == len(text.encode())
    assert loaded.decode(ids) == text


def test_special_token_names_come_from_tokenizer_config(tmp_path):
    _foreign_backend(["<s>", "</s>"]).save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 1)  # EOS pads
    assert loaded.chat_template is None
    assert loaded.token_byte_lengths().tolist() == [0, 0, 1, 1, 2]


def test_a_config_naming_an_absent_token_is_refused(tmp_path):
    _foreign_backend(["<s>", "</s>"]).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<start>"}))
    with pytest.raises(DataError, match="lacks the special token.*<start>"):
        Tokenizer.load(tmp_path)


def test_save_writes_the_config_a_load_reads_back(tmp_path):
    loaded = Tokenizer.load(OFFICIAL_TOKENIZER)
    loaded.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.chat_template == loaded.chat_template and again.hash == loaded.hash
    assert again.special_names == loaded.special_names
