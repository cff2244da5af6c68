import numpy as np

from mtpf.analysis.perturbation import entity_pool, entity_spans, perturb, perturbed_set
from mtpf.data.conll import ConllFormat, TaggedSentence, read_conll
from tests.conftest import SHARED_DIR

SENTENCE = TaggedSentence(
    tokens=[
        "During",
        "his",
        "visit",
        "to",
        "Slovenia",
        ",",
        "Kwasniewski",
        "is",
        "also",
        "scheduled",
        "to",
        "meet",
        "Prime",
        "Minister",
        "Janez",
        "Drnovsek",
    ],
    tags=["O", "O", "O", "O", "B-LOC", "O", "B-PER", "O", "O", "O", "O", "O", "O", "O", "B-PER", "I-PER"],
)


def test_entity_spans():
    assert entity_spans(SENTENCE.tags) == [(4, 5, "LOC"), (6, 7, "PER"), (14, 16, "PER")]
    assert entity_spans(["I-ORG", "I-ORG", "B-ORG", "O", "I-PER"]) == [(0, 2, "ORG"), (2, 3, "ORG"), (4, 5, "PER")]


def test_only_entities_change_each_into_one_of_its_type():
    sentences = read_conll(SHARED_DIR / "data/ner/conll2003/iob2/test.txt", ConllFormat())[:400]
    pool = entity_pool(sentences)
    rng = np.random.default_rng(0)
    changed = 0
    for sentence in sentences:
        variant = perturb(sentence, pool, rng)
        old, new = entity_spans(sentence.tags), entity_spans(variant.tags)
        assert [kind for _, _, kind in old] == [kind for _, _, kind in new]

        # the text outside entities is the same, in the same order
        def outside(s, spans):
            inside = {i for start, end, _ in spans for i in range(start, end)}
            return [t for i, t in enumerate(s.tokens) if i not in inside]

        assert outside(sentence, old) == outside(variant, new)
        for (start, end, kind), (o_start, o_end, _) in zip(new, old):
            replacement = tuple(variant.tokens[start:end])
            assert replacement in pool[kind]
            changed += replacement != tuple(sentence.tokens[o_start:o_end])
        assert len(variant.tokens) == len(variant.tags)
    assert changed > 0.9 * sum(len(entity_spans(s.tags)) for s in sentences)


def test_four_variants_per_sentence_with_entities():
    pairs = perturbed_set([SENTENCE, TaggedSentence(["no", "entity"], ["O", "O"])] * 3, variants=4, seed=1)
    assert len(pairs) == 3 and all(len(variants) == 4 for _, variants in pairs)
