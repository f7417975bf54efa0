"""Fixtures of the server tests: a saved tiny Parcae with its tokenizer, a reference copy of the
model for `parcae.generate`, and the real server (uvicorn in a background thread, its engine in
a child process) on 127.0.0.1 at a free port, shared by the whole session."""

from __future__ import annotations

import pytest

import parcae
from parcae.data.tokenizer import Tokenizer
from tests.infer.conftest import TEXT, tiny_model

CONTEXT = 128
MAX_NUM_STEPS = 32  # deep enough that a request can be made slow (the cancellation tests)


@pytest.fixture(scope="session")
def serve_tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=300)


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory, serve_tokenizer):
    """A saved tiny Parcae (mean recurrence 4, context 128) with its tokenizer.json."""
    directory = tmp_path_factory.mktemp("served") / "parcae-served"
    model = tiny_model("parcae-tiny", context_length=CONTEXT)
    model.save_pretrained(directory)
    serve_tokenizer.save(directory)
    return directory


@pytest.fixture(scope="session")
def reference_model(serve_model_dir):
    """The served model loaded again: `parcae.generate` runs on it, never on the server's."""
    return parcae.from_pretrained(serve_model_dir).eval()


def start_server(model_dir, **options):
    from parcae.serve.server import ServerThread, load_state

    state = load_state(model_dir, max_num_steps=MAX_NUM_STEPS, **options)
    return ServerThread(state).start()


@pytest.fixture(scope="session")
def server(serve_model_dir):
    """The server as `parcae serve` runs it (the engine in a process of its own): a batch of
    4 rows, a queue of 64."""
    running = start_server(serve_model_dir, max_batch=4, max_queue=64, engine="process")
    yield running
    running.stop()
