"""transformers integration: Auto classes, save/load round trip, generate on our cache,
pipeline, and `parcae convert official`."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

import parcae
from parcae.cli import main
from parcae.hf.configuration import ParcaeHFConfig
from parcae.hf.transformers import ParcaeForCausalLM, save_tokenizer
from parcae.infer import generate
from tests.conftest import OFFICIAL_FIXTURE

PROMPT = torch.tensor([[338, 176, 74, 16, 230, 354, 244, 153]])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, official_model):
    path = tmp_path_factory.mktemp("hf")
    ParcaeForCausalLM.from_parcae(official_model).save_pretrained(path)
    return path


def test_import_parcae_does_not_import_transformers():
    code = "import sys, parcae; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_classes_load_a_saved_model(hf_dir, official_model):
    assert isinstance(AutoConfig.from_pretrained(hf_dir), ParcaeHFConfig)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert isinstance(model, ParcaeForCausalLM)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids, use_cache=False).logits, official_model(ids).logits)


def test_saved_directory_loads_with_parcae_too(hf_dir, official_model):
    model = parcae.from_pretrained(hf_dir)
    for key, value in official_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_hf_generate_matches_our_greedy_output(hf_dir, official_model):
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ours = generate(official_model, PROMPT, 12, temperature=0)
    theirs = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert torch.equal(theirs, ours)
    deeper = generate(official_model, PROMPT, 6, num_steps=8, temperature=0)
    assert torch.equal(
        model.generate(PROMPT, max_new_tokens=6, do_sample=False, num_steps=8), deeper
    )


def test_hf_generate_with_left_padding_matches_one_by_one(hf_dir, official_model):
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ids = torch.tensor([[5, 9, 44, 301, 7], [0, 0, 0, 12, 99]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    for row, prompt in zip(out, ([5, 9, 44, 301, 7], [12, 99])):
        alone = generate(official_model, prompt, 6, temperature=0)[0]
        assert row[5 - len(prompt) :].tolist() == alone.tolist()


def test_loss_shifts_labels_like_transformers(official_model):
    model = ParcaeForCausalLM.from_parcae(official_model)
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(ids, labels=ids, use_cache=False).loss
        logits = official_model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_text_generation_pipeline_and_parcae_generate_agree(tmp_path, tokenizer, capsys):
    torch.manual_seed(0)
    model = parcae.create_model(
        "parcae-tiny", vocab_size=300, d_model=64, n_heads=2, ffn_dim=128, context_length=64
    ).eval()
    with torch.no_grad():  # identity-init blocks give near-ties between next-token logits
        for name, parameter in model.named_parameters():
            if name.endswith(("c_proj.weight", "mlp.proj.weight")):
                parameter.normal_(std=0.05)
    ParcaeForCausalLM.from_parcae(model).save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), tokenizer=str(tmp_path))
    text = generator("To be", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    ids = tokenizer.encode_prompt("To be")  # the one BOS rule: BOS first
    expected = generate(model, ids, 5, temperature=0, eos_token_id=tokenizer.eos_id)
    assert text == tokenizer.decode(expected[0, 1:].tolist())
    assert AutoTokenizer.from_pretrained(tmp_path)("To be")["input_ids"] == ids
    argv = ["generate", "--model", str(tmp_path), "--prompt", "To be", "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == text
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token == "<|eos|>"


def test_padded_vocabulary_ids_are_never_generated():
    """Padding columns of the head (V_pad > V) are cut: here they would win every argmax."""
    torch.manual_seed(0)
    model = parcae.create_model(
        "parcae-tiny", vocab_size=300, d_model=64, n_heads=2, ffn_dim=128, tie_embeddings=False
    ).eval()
    vocab, padded = model.config.vocab_size, model.config.padded_vocab_size
    assert padded > vocab
    with torch.no_grad():  # real logits exactly 0; of the rows +w, -w one is > 0 for any state
        head = model.lm_head.weight
        head[:vocab] = 0
        direction = 100 * torch.randn(head.shape[1])
        head[vocab::2], head[vocab + 1 :: 2] = direction, -direction
    wrapper = ParcaeForCausalLM.from_parcae(model)
    ids = torch.tensor([[5, 9, 44, 201]])
    with torch.no_grad():
        assert bool((model(ids).logits.argmax(-1) >= vocab).all())  # what the cut prevents
        assert wrapper(ids, use_cache=False).logits.shape[-1] == vocab
        assert wrapper(ids).logits.shape[-1] == vocab
    greedy = wrapper.generate(ids, max_new_tokens=4, do_sample=False)
    sampled = wrapper.generate(ids, max_new_tokens=4, do_sample=True, top_k=0)
    assert greedy.shape[1] == sampled.shape[1] == 8
    assert int(greedy.max()) < vocab and int(sampled.max()) < vocab


def test_convert_official_command(tmp_path, official_model, tokenizer, capsys):
    tokenizer_dir = tmp_path / "tok"
    tokenizer.save(tokenizer_dir)
    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                "official",
                str(OFFICIAL_FIXTURE),
                str(out),
                "--tokenizer",
                str(tokenizer_dir),
            ]
        )
        == 0
    )
    assert (out / "tokenizer_config.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(out)
    ours = parcae.from_pretrained(out)
    assert torch.equal(
        hf.generate(PROMPT, max_new_tokens=4, do_sample=False),
        generate(ours, PROMPT, 4, temperature=0),
    )


def test_convert_unknown_source_is_one_error(tmp_path, capsys):
    assert main(["convert", "official", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_importing_the_transformers_classes_prints_nothing():
    """transformers imports torchao when the `quant` extra is installed; its import-time log
    lines and warnings must not reach a user of an unrelated command."""
    code = "import parcae.hf.transformers"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""
