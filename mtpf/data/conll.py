"""CoNLL-style column files: one token per line, blank line between sentences.

One reader for the formats our data comes in: token first and tag last (CoNLL-2003, WikiANN, CrossNER, JNLPBA,
OntoNotes), or tag first (MIT Restaurant); tags in IOB1 or BIO (IOB2); document separator lines skipped.
Every sentence comes out with BIO (IOB2) tags.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mtpf.errors import MtpfError

logger = logging.getLogger(__name__)
DOC_MARKERS = ("-DOCSTART-", "###MEDLINE")


class ConllFormatError(MtpfError, ValueError):
    """A malformed line in a column file; the message names the file and line."""


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[str]
    source: str = ""
    line: int = 0


@dataclass
class ConllFormat:
    """How to read one column-file flavour."""

    tag_first: bool = False
    scheme: str = "bio"  # "bio" (IOB2) or "iob1" (converted to BIO)
    token_prefix: str = ""  # stripped from every token (WikiANN's "en:")
    separator: str | None = None  # None: any whitespace
    doc_markers: tuple[str, ...] = field(default=DOC_MARKERS)


TAG_PATTERN = re.compile(r"^(O|[BI]-.+)$")


def read_conll(path: str | os.PathLike, fmt: ConllFormat | None = None) -> list[TaggedSentence]:
    """Read every sentence of a column file, converting tags to BIO."""
    fmt = fmt or ConllFormat()
    path = Path(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    with path.open(encoding="utf-8") as stream:
        for number, raw in enumerate(stream, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip() or line.startswith(fmt.doc_markers):
                if tokens:
                    sentences.append(_finish(tokens, tags, fmt, path, start))
                tokens, tags = [], []
                continue
            columns = line.split(fmt.separator) if fmt.separator else line.split()
            if len(columns) < 2:
                raise ConllFormatError(f"{path}:{number}: expected a token and a tag, got {line!r}.")
            token, tag = (columns[-1], columns[0]) if fmt.tag_first else (columns[0], columns[-1])
            if not TAG_PATTERN.match(tag):
                raise ConllFormatError(f"{path}:{number}: {tag!r} is not a BIO/IOB tag.")
            if not tokens:
                start = number
            tokens.append(token.removeprefix(fmt.token_prefix))
            tags.append(tag)
    if tokens:
        sentences.append(_finish(tokens, tags, fmt, path, start))
    return sentences


def _finish(tokens: list[str], tags: list[str], fmt: ConllFormat, path: Path, line: int) -> TaggedSentence:
    # IOB1 starts entities with I- by design; in BIO files a stray I- is an error that we repair and report
    tags = to_bio(tags) if fmt.scheme == "iob1" else to_bio(tags, warn_at=(path, line))
    return TaggedSentence(tokens=list(tokens), tags=list(tags), source=str(path), line=line)


def to_bio(tags: list[str], warn_at: tuple[Path | str, int] | None = None) -> list[str]:
    """BIO: an I-X that does not continue an X entity starts one (B-X). With `warn_at` (file, first line) each
    such repair is logged with its line."""
    converted = []
    previous = "O"
    for offset, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            if warn_at is not None:
                logger.warning(
                    "%s:%d: %s does not continue an entity; read as B-%s", warn_at[0], warn_at[1] + offset, tag, tag[2:]
                )
            tag = "B-" + tag[2:]
        converted.append(tag)
        previous = tag
    return converted
