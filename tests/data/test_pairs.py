import json

import pytest

from mtpf.data.pairs import PairFileError, load_pair_source, load_pair_sources
from mtpf.training.args import DataArguments
from tests.conftest import SHARED_DIR


def test_shared_pairs_load_with_readme_counts():
    paths = DataArguments(pairs=[str(SHARED_DIR / "data/pairs")]).pair_paths()
    sources = load_pair_sources(paths)
    assert len(sources) == 9
    assert sum(len(s.dataset) for s in sources) == 152_162
    assert {s.name: len(s.dataset) for s in sources}["flickr30k_captions"] == 62_026


def test_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"anchor": "a b", "positive": "c d"}) + "\n", encoding="utf-8")
    assert load_pair_source(str(jsonl)).dataset[0] == {"anchor": "a b", "positive": "c d"}
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('q,a\n"x, y",z\n', encoding="utf-8")
    assert load_pair_source(str(csv_file)).dataset[0] == {"anchor": "x, y", "positive": "z"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"empty\.tsv: holds no text pairs"),
        ("a\tb\n", r"empty\.tsv: holds no text pairs"),
        ("only\nrow\n", r"empty\.tsv:1: expected a header with 2 columns, found 1"),
        ("a\tb\nx\ty\tz\n", r"empty\.tsv:2: expected 2 columns, found 3"),
        ("a\tb\nx\t \n", r"empty\.tsv:2: empty text"),
    ],
)
def test_bad_pair_files_are_named(tmp_path, content, message):
    path = tmp_path / "empty.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PairFileError, match=message):
        load_pair_source(str(path))


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a"}\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"p\.jsonl:2: expected 'anchor' and 'positive'"):
        load_pair_source(str(path))


def test_binary_pair_file_is_named_by_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"anchor\tpositive\nA cat.\tA kitten.\n\x89PNG\r\n\x1a\n\x00\xff\tx\n")
    with pytest.raises(PairFileError, match=r"pairs\.tsv:3: not UTF-8 text"):
        load_pair_source(str(path))
