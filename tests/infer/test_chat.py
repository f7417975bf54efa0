"""The chat session (`parcae.infer.chat`) as a library function: streams in, replies out."""

import io

from parcae.data.chat_template import ChatTemplate
from parcae.infer.chat import BANNER, REPLY, chat_session, read_lines, reply
from parcae.infer.sampling import SamplingParams


class Bytes(io.TextIOWrapper):
    """A text stream over bytes (as sys.stdin is), not a terminal."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw), encoding="utf-8")


def test_each_line_is_answered_as_reply_answers_it(parcae_model, tokenizer):
    params = SamplingParams(max_new_tokens=4, temperature=0)
    template = ChatTemplate()
    out, err = io.StringIO(), io.StringIO()
    chat_session(parcae_model, tokenizer, template, params, io.StringIO("To be\n/exit\n"), out, err)
    expected = reply(
        parcae_model, tokenizer, template, [{"role": "user", "content": "To be"}], params
    )
    assert out.getvalue() == f"{BANNER}\n\n{REPLY}{expected}\n\n"
    assert err.getvalue() == ""


def test_a_line_that_is_not_text_is_skipped_with_one_warning(parcae_model, tokenizer):
    stdin = Bytes(b"\xff\xfe\n/reset\n")
    out, err = io.StringIO(), io.StringIO()
    params = SamplingParams(max_new_tokens=2, temperature=0)
    chat_session(parcae_model, tokenizer, ChatTemplate(), params, stdin, out, err)
    assert (
        err.getvalue() == "parcae: warning: line 1 of stdin is not valid utf-8 text; skipped it\n"
    )
    assert out.getvalue() == f"{BANNER}\n\n(new conversation)\n\n"


def test_adaptive_replies_report_their_loop_steps(parcae_model, tokenizer):
    params = SamplingParams(max_new_tokens=3, temperature=0, adaptive=0.5)
    err = io.StringIO()
    chat_session(
        parcae_model, tokenizer, ChatTemplate(), params, io.StringIO("hi\n"), io.StringIO(), err
    )
    assert err.getvalue().startswith("parcae: adaptive exit: ")
    assert err.getvalue().endswith("loop steps per token (at most 4)\n")


def test_read_lines_gives_none_for_an_undecodable_line():
    assert list(read_lines(Bytes(b"a\r\n\xff\nb\n"))) == ["a\n", None, "b\n"]
