"""The engine's forward: a one-app batch (adapter active, merged weights cached) answers as the same rows in a mixed
batch do, with any cache budget."""

import pytest
import torch

from mtpf.fused_lora import FusedLoraLinear, cached_weight_bytes
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
    assert [e["entity_group"] for e in alone[2][0]["entities"]] == [e["entity_group"] for e in mixed[4]["entities"]]
    app_embeddings = engine.run(rows(engine, "emotion", "embeddings", texts))  # the app's LoRA really applied
    assert not torch.allclose(torch.tensor(app_embeddings), torch.tensor(alone[4]), atol=1e-3)


def test_every_module_serves_in_eval_mode_and_backbone_batches_keep_the_adapters(engine):
    """PEFT wraps an app's linears beyond the slots' layers with new modules in training mode; served, they would form
    W + s·B·A on every forward (and drop out). A backbone-only batch switches the adapters off for one forward only."""
    assert [name for name, module in engine.model.named_modules() if module.training] == []
    engine.run(rows(engine, BASE, "embeddings", ["a backbone-only batch"]))
    layers = [module for module in engine.model.modules() if isinstance(module, FusedLoraLinear)]
    assert layers and not any(layer.disable_adapters for layer in layers)
    texts = ["i feel wonderful and calm today"]
    app_rows = rows(engine, "emotion", "embeddings", texts)
    assert engine.run(app_rows) != engine.run(rows(engine, BASE, "embeddings", texts))  # the app's LoRA is on again


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


def test_merged_weights_are_cached_within_the_budget(app, caplog):
    release, ner_app = app
    engine = Engine(str(release))
    engine.add_app("tagger", str(ner_app))
    layers = [m for m in engine.model.modules() if isinstance(m, FusedLoraLinear)]
    assert layers and all(layer.max_cached_weights >= 3 for layer in layers)  # tc, ner and the app all fit
    text = ["Alan Turing worked in Manchester ."]
    for name, task in (("tagger", "ner"), ("tc", "embeddings"), ("tagger", "ner")):
        answer = engine.run(rows(engine, name, task, text))
    assert {"tagger", "tc"} <= set(layers[-1]._weight_cache)

    budget_for_one = cached_weight_bytes(engine.model) * 1.5 / 2**20
    tight = Engine(str(release), merged_weights_mb=budget_for_one)
    with caplog.at_level("WARNING", logger="mtpf.serve.engine"):
        tight.add_app("tagger", str(ner_app))
    assert "merged weights of 1 of 3 adapters fit" in caplog.text
    unmerged = Engine(str(release), merged_weights_mb=0)  # PEFT's unmerged LoRA throughout
    unmerged.add_app("tagger", str(ner_app))
    for other in (tight, unmerged):
        for name, task in (("tc", "embeddings"), ("tagger", "ner")):
            got, expected = other.run(rows(other, name, task, text)), engine.run(rows(engine, name, task, text))
            if task == "ner":
                got_entities, expected_entities = got[0]["entities"], expected[0]["entities"]
                assert [e["entity_group"] for e in got_entities] == [e["entity_group"] for e in expected_entities]
                assert [e["score"] for e in got_entities] == pytest.approx(
                    [e["score"] for e in expected_entities], abs=1e-5
                )
            else:
                torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=1e-4)
    assert answer == engine.run(rows(engine, "tagger", "ner", text))
