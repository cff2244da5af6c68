"""The engine's forward: a one-app batch (adapter set active) answers as the same rows in a mixed batch do."""

import pytest
import torch

from mtpf.serve.engine import BASE, Engine, Row


@pytest.fixture(scope="module")
def engine(app, classifier_app):
    release, ner_app = app
    _, classifier = classifier_app
    engine = Engine(str(release))
    engine.add_app("tagger", str(ner_app))
    engine.add_app("emotion", str(classifier))
    return engine


def rows(engine: Engine, name: str, task: str, texts: list[str]) -> list[Row]:
    served = engine.lookup(name, task)
    return [Row(served, text, task, len(text.split())) for text in texts]


def test_one_app_batches_equal_the_mixed_path(engine):
    texts = ["i feel wonderful and calm today", "this is the worst service ever"]
    embeddings = rows(engine, "tc", "embeddings", texts)
    emotions = rows(engine, "emotion", "classify", texts)
    tags = rows(engine, "tagger", "ner", ["Alan Turing worked in Manchester ."])
    base = rows(engine, BASE, "embeddings", texts)
    mixed = engine.run([*embeddings, *emotions, *tags, *base])  # several adapters: PEFT's per-row path
    alone = [engine.run(group) for group in (emotions, embeddings, tags, emotions, base)]  # switching back and forth
    for got, expected in ((alone[1], mixed[0:2]), (alone[4], mixed[5:7])):
        cosine = torch.nn.functional.cosine_similarity(torch.tensor(got), torch.tensor(expected))
        assert bool((cosine > 1 - 1e-5).all()), cosine
    for answers in (alone[0], alone[3]):
        assert [a["label"] for a in answers] == [m["label"] for m in mixed[2:4]]
        assert [a["score"] for a in answers] == pytest.approx([m["score"] for m in mixed[2:4]], abs=1e-5)
    assert [e["entity_group"] for e in alone[2][0]] == [e["entity_group"] for e in mixed[4]]
    app_embeddings = engine.run(rows(engine, "emotion", "embeddings", texts))  # the app's LoRA really applied
    assert not torch.allclose(torch.tensor(app_embeddings), torch.tensor(alone[4]), atol=1e-3)


def test_an_app_removed_while_active_is_gone_and_can_come_back(engine, classifier_app):
    _, classifier = classifier_app
    text = ["i am so angry"]
    before = engine.run(rows(engine, "emotion", "classify", text))
    engine.remove_app("emotion")
    engine.run(rows(engine, "tc", "embeddings", text))  # another adapter becomes active
    engine.add_app("emotion", str(classifier))
    after = engine.run(rows(engine, "emotion", "classify", text))
    assert after[0]["label"] == before[0]["label"]
    assert after[0]["score"] == pytest.approx(before[0]["score"], abs=1e-6)
