import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import mtpf.pseudo_labels as pseudo_labels
from mtpf.data.corpus import CorpusError, split_words
from mtpf.pseudo_labels import PseudoLabelSettings, embed_words, load_or_build_pseudo_labels
from mtpf.weights import tiny_encoder_dir

SENTENCES = [
    "Amrozi accused his brother of deliberately distorting his evidence.",
    "Yucaipa owned Dominick's before selling the chain to Safeway in 1998.",
    "The Paleo-Indian period spans from the first signs of human presence.",
] * 20


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n\n", encoding="utf-8")
    return path


def settings_for(corpus, tmp_path, **overrides) -> PseudoLabelSettings:
    values = dict(
        teacher=str(tiny_encoder_dir()),
        corpus=[str(corpus)],
        num_clusters=8,
        cache_dir=str(tmp_path / "cache"),
        kmeans_chunk=64,
        batch_size=16,
    )
    values.update(overrides)
    return PseudoLabelSettings(**values)


def test_every_word_gets_a_cluster_and_the_cache_is_reused(corpus, tmp_path, monkeypatch):
    dataset = load_or_build_pseudo_labels(settings_for(corpus, tmp_path))
    assert len(dataset) == len(SENTENCES)
    for row in dataset:
        assert len(row["labels"]) == len(row["words"]) and all(0 <= label < 8 for label in row["labels"])
    assert len({label for row in dataset for label in row["labels"]}) > 1
    first = dataset[0]["words"]
    assert first == split_words(SENTENCES[0])
    # same word in the same context -> same cluster (the corpus repeats every sentence)
    assert dataset[0]["labels"] == dataset[3]["labels"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(pseudo_labels, "cluster_teacher_embeddings", must_not_run)
    assert load_or_build_pseudo_labels(settings_for(corpus, tmp_path))["labels"] == dataset["labels"]
    with pytest.raises(AssertionError, match="reused"):
        load_or_build_pseudo_labels(settings_for(corpus, tmp_path, num_clusters=4))


def test_cache_is_rebuilt_when_the_corpus_or_the_teacher_changes_in_place(corpus, tmp_path, monkeypatch):
    """Same size, same mtime to the second: only the content differs, and that must be enough."""
    import os
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_encoder_dir(), teacher)
    settings = settings_for(corpus, tmp_path, teacher=str(teacher))
    load_or_build_pseudo_labels(settings)
    builds = []
    monkeypatch.setattr(pseudo_labels, "cluster_teacher_embeddings", lambda *a, **k: builds.append(1) or 1 / 0)

    def edit_in_place(path, change):
        stat = path.stat()
        data = bytearray(path.read_bytes())
        change(data)
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size

    edit_in_place(corpus, lambda data: data.__setitem__(0, ord("B")))  # "Amrozi" -> "Bmrozi"
    with pytest.raises(ZeroDivisionError):
        load_or_build_pseudo_labels(settings)
    edit_in_place(corpus, lambda data: data.__setitem__(0, ord("A")))  # back: the first cache fits again
    load_or_build_pseudo_labels(settings)
    weights = teacher / "model.safetensors"
    edit_in_place(weights, lambda data: data.__setitem__(len(data) - 1, data[-1] ^ 1))  # one weight bit
    with pytest.raises(ZeroDivisionError):
        load_or_build_pseudo_labels(settings)
    assert len(builds) == 2


def test_word_embedding_is_mean_of_its_subtokens():
    folder = tiny_encoder_dir()
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    words = ["Dominick's", "deliberately", "x"]
    vectors, kept = embed_words(model, tokenizer, [words], max_length=32)
    encoded = tokenizer([words], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**encoded).last_hidden_state[0]
    word_ids = encoded.word_ids(0)
    for index in range(len(words)):
        positions = [p for p, w in enumerate(word_ids) if w == index]
        assert len(positions) >= 1
        torch.testing.assert_close(torch.from_numpy(vectors[index]), tokens[positions].mean(0), atol=1e-5, rtol=0)
    assert kept.all()


def test_truncated_words_are_ignored(corpus, tmp_path):
    dataset = load_or_build_pseudo_labels(settings_for(corpus, tmp_path, max_length=6))
    assert -1 in dataset[0]["labels"] and dataset[0]["labels"][0] >= 0


def test_bad_corpora_and_settings_fail_cleanly(tmp_path, corpus, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="holds no words"):
        load_or_build_pseudo_labels(settings_for(empty, tmp_path))
    with pytest.raises(ValueError, match=r"num_clusters=5000 is larger than the \d+ words"):
        load_or_build_pseudo_labels(settings_for(corpus, tmp_path, num_clusters=5000))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-written

    class SlowTokenizer:
        is_fast = False

    monkeypatch.setattr(pseudo_labels.AutoTokenizer, "from_pretrained", lambda *a, **k: SlowTokenizer())
    with pytest.raises(ValueError, match="not a fast tokenizer"):
        load_or_build_pseudo_labels(settings_for(corpus, tmp_path))


def test_loading_the_teacher_leaves_the_training_rng_alone():
    """The task heads are initialised after the pseudo-labels: a teacher load that drew random numbers would change
    every run's initial weights (and break bit-for-bit reproduction of earlier runs)."""
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    pseudo_labels.load_teacher(str(tiny_encoder_dir()))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_co_teachers_join_the_teachers_word_embeddings(corpus, tmp_path):
    """With a co-teacher, k-means sees each encoder's word embedding at unit length, side by side."""
    alone = settings_for(corpus, tmp_path)
    joint = settings_for(corpus, tmp_path, co_teachers=[str(tiny_encoder_dir())])
    assert joint.fingerprint() != alone.fingerprint()
    dataset = load_or_build_pseudo_labels(joint)
    assert all(len(row["labels"]) == len(row["words"]) for row in dataset)
    assert len({label for row in dataset for label in row["labels"]}) > 1
    hidden = AutoModel.from_pretrained(tiny_encoder_dir()).config.hidden_size
    centroids = np.load(next((tmp_path / "cache").glob("*/centroids.npy")))
    assert centroids.shape == (8, 2 * hidden)
    # the same encoder twice, each half at unit length: every centroid's two halves agree
    assert np.allclose(centroids[:, :hidden], centroids[:, hidden:], atol=1e-3)
