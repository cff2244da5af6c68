"""Entity replacement (paper Fig. 5): every entity of a sentence swapped for a random entity of the same type."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mtpf.data.conll import TaggedSentence


def entity_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) of each BIO entity; an I- that does not continue an entity starts one."""
    spans: list[tuple[int, int, str]] = []
    start, kind = None, None
    for position, tag in enumerate([*tags, "O"]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            spans.append((start, position, kind))
            start, kind = None, None
        if tag != "O" and not continues:
            start, kind = position, tag[2:]
    return spans


def entity_pool(sentences: list[TaggedSentence]) -> dict[str, list[tuple[str, ...]]]:
    """Every distinct entity string of each type in the set (the replacement candidates)."""
    pool: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for sentence in sentences:
        for start, end, kind in entity_spans(sentence.tags):
            pool[kind].add(tuple(sentence.tokens[start:end]))
    return {kind: sorted(entities) for kind, entities in pool.items()}


def perturb(
    sentence: TaggedSentence, pool: dict[str, list[tuple[str, ...]]], rng: np.random.Generator
) -> TaggedSentence:
    """One variant: each entity replaced by a random different entity of its type; the rest untouched."""
    tokens: list[str] = []
    tags: list[str] = []
    cursor = 0
    for start, end, kind in entity_spans(sentence.tags):
        tokens += sentence.tokens[cursor:start]
        tags += sentence.tags[cursor:start]
        original = tuple(sentence.tokens[start:end])
        candidates = [entity for entity in pool[kind] if entity != original] or [original]
        replacement = candidates[int(rng.integers(len(candidates)))]
        tokens += replacement
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(replacement) - 1)
        cursor = end
    tokens += sentence.tokens[cursor:]
    tags += sentence.tags[cursor:]
    return TaggedSentence(tokens=tokens, tags=tags, source=sentence.source, line=sentence.line)


def perturbed_set(
    sentences: list[TaggedSentence], variants: int = 4, seed: int = 0, max_sentences: int | None = None
) -> list[tuple[TaggedSentence, list[TaggedSentence]]]:
    """Sentences with at least one entity, each with `variants` perturbed copies (deterministic in seed)."""
    pool = entity_pool(sentences)
    rng = np.random.default_rng(seed)
    with_entities = [s for s in sentences if entity_spans(s.tags)]
    if max_sentences is not None:
        with_entities = with_entities[:max_sentences]
    return [(s, [perturb(s, pool, rng) for _ in range(variants)]) for s in with_entities]
