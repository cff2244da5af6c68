import pytest

from mtpf.data.conll import ConllFormat, ConllFormatError, read_conll, to_bio
from tests.conftest import SHARED_DIR


def test_iob1_becomes_bio():
    assert to_bio(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    ]


def test_reads_prefixed_and_tag_first_files(tmp_path):
    wikiann = tmp_path / "w.txt"
    wikiann.write_text("en:Paris\tB-LOC\nen:is\tO\n\nen:Bob\tB-PER\n", encoding="utf-8")
    sentences = read_conll(wikiann, ConllFormat(token_prefix="en:"))
    assert [s.tokens for s in sentences] == [["Paris", "is"], ["Bob"]]
    mit = tmp_path / "m.bio"
    mit.write_text("B-Dish\tpizza\nO\tplease\n", encoding="utf-8")
    assert read_conll(mit, ConllFormat(tag_first=True))[0].tags == ["B-Dish", "O"]


def test_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("Paris B-LOC\nlonely\n", encoding="utf-8")
    with pytest.raises(ConllFormatError, match=r"bad\.txt:2: expected a token and a tag"):
        read_conll(path)
    path.write_text("Paris LOC\n", encoding="utf-8")
    with pytest.raises(ConllFormatError, match=r"bad\.txt:1: 'LOC' is not a BIO/IOB tag"):
        read_conll(path)


def test_wikigold_counts_match_source():
    """SOURCE.md: 1,696 sentences + 145 DOCSTART lines, 39,007 tokens, 3,558 entities."""
    sentences = read_conll(SHARED_DIR / "data/ner_pretrain/wikigold/wikigold.conll.txt", ConllFormat(scheme="iob1"))
    assert len(sentences) == 1696
    assert sum(len(s.tokens) for s in sentences) == 39_007
    assert sum(tag.startswith("B-") for s in sentences for tag in s.tags) == 3558


def test_stray_inside_tag_in_bio_is_repaired_and_reported_by_line(tmp_path, caplog):
    path = tmp_path / "bio.txt"
    path.write_text("x O\n\nthe O\nParis I-LOC\ncity O\n", encoding="utf-8")
    sentences = read_conll(path)
    assert sentences[1].tags == ["O", "B-LOC", "O"]
    assert f"{path}:4: I-LOC does not continue an entity; read as B-LOC" in caplog.text
