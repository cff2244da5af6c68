import random

import pytest
import torch

from mtpf.apps.ner.data import check_label_sets, load_ner_dataset
from mtpf.apps.ner.train import (
    DOWNSTREAM,
    NerProtocol,
    build_ner_model,
    decode_tags,
    encode_sentences,
    entity_f1,
    sort_by_length,
    train_ner,
)
from mtpf.data.conll import TaggedSentence
from mtpf.models import load_model
from mtpf.training.downstream import DownstreamData, repeat_to_min_steps, subsample
from tests.conftest import SHARED_DIR, TINY

NER_ROOT = SHARED_DIR / "data" / "ner"


def test_seqeval_perfect_and_shuffled_tags():
    gold = [s.tags for s in load_ner_dataset("conll2003", NER_ROOT)["test"][:500]]
    assert entity_f1(gold, gold) == 100.0
    rng = random.Random(0)
    shuffled = [rng.sample(tags, len(tags)) for tags in gold]
    assert entity_f1(gold, shuffled) < 30.0
    # strict IOB2: an entity predicted with I- only (no B-) does not count
    assert entity_f1([["B-PER", "I-PER"]], [["I-PER", "I-PER"]]) == 0.0


def test_subsample_is_fixed_and_sized():
    rows = [TaggedSentence([str(i)], ["O"]) for i in range(100)]
    tenth = subsample(rows, 0.1)
    assert len(tenth) == 10 and tenth == subsample(rows, 0.1)
    assert len(subsample(rows, 0.5, cap=20)) == 20 and subsample(rows, 1.0) == rows
    with pytest.raises(ValueError, match="fraction"):
        subsample(rows, 0.0)


def test_small_training_sets_repeat_to_the_minimum_steps_per_epoch():
    rows = [TaggedSentence([str(i)], ["O"]) for i in range(1000)]
    tenth = rows[:100]
    assert len(repeat_to_min_steps(tenth, batch_size=32, min_steps=20)) == 700  # 22 steps >= 20
    assert repeat_to_min_steps(tenth, 32, 20)[100:200] == tenth  # whole copies: every sentence equally often
    assert repeat_to_min_steps(rows, 32, 20) == rows and repeat_to_min_steps(tenth, 32, 0) == tenth


def test_labels_on_first_subtokens_and_truncated_words_are_o():
    candidate = load_model(TINY)
    sentence = TaggedSentence(["Washington", "unbelievably", "rocks"], ["B-LOC", "O", "B-MISC"])
    ids = {"O": 0, "B-LOC": 1, "B-MISC": 2}
    row = encode_sentences([sentence], candidate.tokenizer, ids, max_length=64)[0]
    words = candidate.tokenizer([sentence.tokens], is_split_into_words=True).word_ids(0)
    first = [i for i, w in enumerate(words) if w is not None and (i == 0 or words[i - 1] != w)]
    assert [row["labels"][i] for i in first] == [1, 0, 2]
    assert sum(label != -100 for label in row["labels"]) == 3 < len(row["input_ids"]) - 2  # "unbelievably" splits
    short = encode_sentences([sentence], candidate.tokenizer, ids, max_length=3)[0]  # [CLS] w1 [SEP]
    predicted = decode_tags([[0, 1, 0]], [short["labels"]], {0: "O", 1: "B-LOC"}, [sentence])
    assert predicted == [["B-LOC", "O", "O"]]


def test_prediction_rows_sorted_by_length_stay_aligned_with_their_gold_sentences():
    candidate = load_model(TINY)
    words = [["a"] * 9, ["b"], ["c"] * 4, ["d"] * 2]
    sentences = [TaggedSentence(w, ["B-X"] + ["O"] * (len(w) - 1)) for w in words]
    encoded = encode_sentences(sentences, candidate.tokenizer, {"O": 0, "B-X": 1}, max_length=64)
    gold, rows = sort_by_length(sentences, encoded)
    assert [s.tokens[0] for s in gold] == ["b", "d", "c", "a"]
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    for sentence, labels in zip(gold, rows["labels"], strict=True):
        assert sum(label != -100 for label in labels) == len(sentence.tokens)


def lora_delta(module, adapter: str) -> torch.Tensor:
    return module.scaling[adapter] * module.lora_B[adapter].weight @ module.lora_A[adapter].weight


def test_ner_slot_initialises_the_downstream_lora(slotted_release):
    candidate = load_model(str(slotted_release))
    protocol = NerProtocol()  # r=32, alpha=64 on every layer; the slot is r=8, alpha=32 on the last layer
    model = build_ner_model(candidate, ["O", "B-X", "I-X"], protocol)
    slot_model = candidate.fresh_backbone().load_task_adapters(["ner"])
    for layer in (0, 1):
        name = f"backbone.encoder.layer.{layer}.attention.self.query"
        downstream = model.base_model.model.get_submodule(name)
        delta = lora_delta(downstream, DOWNSTREAM)
        if layer == 1:  # a slot layer: the downstream LoRA reproduces the slot's update exactly
            expected = lora_delta(slot_model.base_model.model.get_submodule(name), "ner")
            assert expected.abs().max() > 1e-3
            torch.testing.assert_close(delta, expected)
        else:  # no slot here: fresh LoRA, no update
            assert delta.abs().max() == 0
    with pytest.raises(ValueError, match="raise the protocol's r"):
        build_ner_model(candidate, ["O"], NerProtocol(r=4, lora_alpha=8))


def test_finetune_scores_test_at_best_dev_and_leaves_the_backbone_alone():
    candidate = load_model(TINY)
    splits = load_ner_dataset("crossner_ai", NER_ROOT)
    labels = check_label_sets(splits, "crossner_ai")
    before = {k: v.clone() for k, v in candidate.backbone.state_dict().items()}
    protocol = NerProtocol(
        warmup_epochs=1,
        epochs=3,
        batch_size=16,
        learning_rate=1e-3,
        max_length=48,
        max_train_sentences=32,
        max_dev_sentences=16,
        max_test_sentences=24,
        min_steps_per_epoch=2,
    )
    run, _ = train_ner(candidate, DownstreamData("crossner_ai", splits, labels), protocol, fraction=0.5, seed=1)
    assert run.train_sentences == 16 and run.test_sentences == 24 and 0.0 <= run.test_f1 <= 100.0
    assert run.rows_per_epoch == 32  # 16 sentences twice: 2 batches of 16 per epoch
    assert len(run.dev_curve) == 3 and run.dev_f1 == max(run.dev_curve)  # selection over the joint epochs
    assert run.best_epoch == 1.0 + run.dev_curve.index(max(run.dev_curve))
    after = candidate.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every run starts from the untouched backbone


def test_keep_best_on_dev_restores_the_weights_of_the_best_epoch():
    """Dev F1 10, 30, 20 while the weights keep changing: the weights of epoch 2 come back, not the last ones."""
    from types import SimpleNamespace

    from mtpf.training.downstream import KeepBestOnDev

    model = torch.nn.Linear(2, 2)
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    model.register_parameter("frozen", frozen)
    keep = KeepBestOnDev(model)
    states = []
    for epoch, f1 in enumerate([10.0, 30.0, 20.0], start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        states.append(model.weight.detach().clone())
        keep.on_evaluate(None, SimpleNamespace(epoch=float(epoch)), None, metrics={"eval_f1": f1})
    keep.restore()
    assert torch.equal(model.weight, states[1]) and keep.best_epoch == 2.0 and keep.curve == [10.0, 30.0, 20.0]
