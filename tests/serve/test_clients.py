"""The clients users already have, unmodified and with their default settings, against a real `mtpf serve`: the
official `openai` package (which asks for base64 by default) and LangChain's `OpenAIEmbeddings` (through it).
Their vectors equal sentence-transformers' on the same release."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.serve.test_server import KEY, Server

TEXTS = ["The bank approved my card.", "Where is my refund?", "a"]


@pytest.fixture(scope="module")
def running(app, tmp_path_factory):
    release, _ = app
    server = Server(release, "--api_key", KEY, log=tmp_path_factory.mktemp("clients") / "server.log")
    yield server, release
    server.stop()


@pytest.fixture(scope="module")
def reference(running, tmp_path_factory, monkeypatch_module):
    """sentence-transformers on the release's backbone: what `model="base"` must answer."""
    from sentence_transformers import SentenceTransformer

    monkeypatch_module.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("modules")))
    _, release = running
    model = SentenceTransformer(str(release / "backbone"), device="cpu", trust_remote_code=True)
    return lambda texts: model.encode(texts, convert_to_numpy=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def vector(embedding: list[float] | str) -> np.ndarray:
    """The client decodes base64 itself when it chose it (its default); asked for explicitly, it hands the string on:
    little-endian float32 bytes, as OpenAI encodes them."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding)


@pytest.mark.parametrize("encoding_format", [None, "base64", "float"])  # None: the client's default (base64)
def test_openai_client_embeddings(running, reference, encoding_format):
    server, _ = running
    extra = {"encoding_format": encoding_format} if encoding_format else {}
    response = openai_client(server).embeddings.create(model="base", input=TEXTS, **extra)
    got = np.array([vector(item.embedding) for item in response.data])
    np.testing.assert_allclose(got, reference(TEXTS), atol=1e-5, rtol=0)
    single = openai_client(server).embeddings.create(model="base", input=TEXTS[0], **extra)
    np.testing.assert_allclose(vector(single.data[0].embedding), got[0], atol=1e-5, rtol=0)
    assert response.usage.prompt_tokens > 0


def test_openai_client_errors_carry_the_servers_message(running):
    import openai

    server, _ = running
    client = openai_client(server)
    with pytest.raises(openai.NotFoundError, match="model 'nope' is not served"):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match="does not support truncating"):
        client.embeddings.create(model="base", input="x", dimensions=64)
    assert client.models.retrieve("tc").id == "tc"
    assert {model.id for model in client.models.list()} >= {"base", "tc", "ner"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_langchain_openai_embeddings(running, reference):
    from langchain_openai import OpenAIEmbeddings

    server, _ = running
    embeddings = OpenAIEmbeddings(
        model="base", base_url=f"{server.url}/v1", api_key=KEY, check_embedding_ctx_length=False, max_retries=0
    )
    np.testing.assert_allclose(np.array(embeddings.embed_documents(TEXTS)), reference(TEXTS), atol=1e-5, rtol=0)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[0]), reference(TEXTS[:1])[0], atol=1e-5, rtol=0)


def test_langchain_default_token_ids_get_a_clear_error(running):
    """LangChain's default (check_embedding_ctx_length=True) sends tiktoken ids: refused by name, not misread."""
    import openai

    server, _ = running
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
        client.embeddings.create(model="base", input=[[101, 7592, 102]])
