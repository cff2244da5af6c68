"""Unlabeled text for NER distillation: one sentence per line, split into words."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mtpf.errors import MtpfError

# Words keep inner hyphens/apostrophes/periods ("south-westerly", "U.S."); other punctuation is its own word.
WORD_PATTERN = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")


class CorpusError(MtpfError, ValueError):
    """An unlabeled corpus that gives no words."""


def split_words(line: str) -> list[str]:
    return WORD_PATTERN.findall(line)


def read_corpus(
    paths: list[str | os.PathLike],
    max_sentences: int | None = None,
    max_words_per_sentence: int = 128,
) -> list[list[str]]:
    """Sentences as word lists, in file order, up to `max_sentences`; long sentences are cut."""
    sentences: list[list[str]] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus file not found.")
        with path.open(encoding="utf-8") as stream:
            for line in stream:
                words = split_words(line)[:max_words_per_sentence]
                if words:
                    sentences.append(words)
                if max_sentences is not None and len(sentences) >= max_sentences:
                    return sentences
    if not sentences:
        raise CorpusError(f"The corpus {[str(p) for p in paths]} holds no words.")
    return sentences
