"""NER distillation targets: teacher word embeddings clustered by mini-batch k-means (paper Sec. 4, App. B).

A teacher encoder embeds every word (mean of its sub-token embeddings); `MiniBatchKMeans` is fitted on the
stream; each word's cluster id becomes its pseudo-label. Embeddings go to a float16 memory map on disk, so
memory stays bounded for millions of words and the teacher runs once. The labels (Arrow, via `datasets`) and
centroids are cached under a fingerprint of everything that determines them, and reused on re-run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from sklearn.cluster import MiniBatchKMeans
from sklearn.preprocessing import normalize
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from mtpf.data.corpus import CorpusError, read_corpus
from mtpf.data.tokens import model_inputs
from mtpf.io import atomic_directory, file_digest
from mtpf.weights import resolve_model_path

logger = logging.getLogger(__name__)
IGNORED_WORD = -1  # words cut by truncation: no label, ignored by the loss


@dataclass
class PseudoLabelSettings:
    """Everything that determines the labels (and so the cache key)."""

    teacher: str
    corpus: list[str]
    co_teachers: list[str] = field(default_factory=list)  # further encoders whose word embeddings join the teacher's
    num_clusters: int = 200
    max_sentences: int | None = None
    max_length: int = 128
    batch_size: int = 64
    kmeans_chunk: int = 8192
    kmeans_epochs: int = 1
    seed: int = 0
    cache_dir: str = "outputs/pseudo-labels"

    def fingerprint(self) -> str:
        description = asdict(self)
        description.pop("cache_dir")
        description["corpus_files"] = [_file_identity(path) for path in self.corpus]
        description["teacher_files"] = _folder_identity(resolve_model_path(self.teacher))
        if self.co_teachers:
            description["co_teacher_files"] = [_folder_identity(resolve_model_path(name)) for name in self.co_teachers]
        else:
            description.pop("co_teachers")  # a teacher alone keeps the fingerprint (and cache) it had before
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def _file_identity(path: str) -> list:
    """The file's name and content digest: an edit is seen even when size and mtime (to the second) stay."""
    return [Path(path).name, file_digest(path)]


def _folder_identity(name_or_path: str) -> list:
    folder = Path(name_or_path)
    if not folder.is_dir():
        return [name_or_path]
    return [_file_identity(str(p)) for p in sorted(folder.glob("*")) if p.suffix in (".json", ".safetensors")]


def load_or_build_pseudo_labels(settings: PseudoLabelSettings) -> Dataset:
    """The pseudo-labelled corpus (`words`, `labels`), from the cache when its fingerprint matches."""
    target = Path(settings.cache_dir) / settings.fingerprint()
    if (target / "meta.json").is_file():
        logger.info("Reusing pseudo-labels from %s", target)
        return load_from_disk(str(target / "dataset"))
    sentences = read_corpus(settings.corpus, settings.max_sentences)
    with atomic_directory(target) as staging:
        labels, centroids = cluster_teacher_embeddings(sentences, settings, staging)
        dataset = Dataset.from_dict({"words": sentences, "labels": labels})
        dataset.save_to_disk(str(staging / "dataset"))
        np.save(staging / "centroids.npy", centroids)
        meta = {"settings": asdict(settings), "num_sentences": len(sentences), "num_words": int(sum(map(len, labels)))}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    logger.info("Pseudo-labels written to %s", target)
    return load_from_disk(str(target / "dataset"))


def load_teacher(name_or_path: str) -> tuple[torch.nn.Module, AutoTokenizer]:
    """The teacher's encoder (any model name, `mtpf.models.load_model`) and its fast tokenizer."""
    from mtpf.models import load_model

    with torch.random.fork_rng():  # building the wrapper draws init weights: keep the run's RNG where it was
        teacher = load_model(name_or_path)
    if not teacher.tokenizer.is_fast:
        raise ValueError(f"Teacher {name_or_path!r}: its tokenizer is not a fast tokenizer, so it gives no word ids.")
    return teacher.backbone.eval(), teacher.tokenizer


def cluster_teacher_embeddings(
    sentences: list[list[str]], settings: PseudoLabelSettings, workdir: Path
) -> tuple[list[list[int]], np.ndarray]:
    """Embed every word with the teacher, fit k-means on the stream, and label every word."""
    num_words = sum(map(len, sentences))
    if num_words == 0:
        raise CorpusError(f"The corpus {settings.corpus} holds no words.")
    if settings.num_clusters > num_words:
        raise ValueError(f"num_clusters={settings.num_clusters} is larger than the {num_words} words of the corpus.")
    kmeans = MiniBatchKMeans(
        n_clusters=settings.num_clusters, random_state=settings.seed, batch_size=settings.kmeans_chunk, n_init=3
    )
    path = workdir / "embeddings.npy"
    embeddings, valid = _embed_and_fit(sentences, settings, kmeans, path)
    for _ in range(settings.kmeans_epochs - 1):  # more passes over the stored embeddings, chunk by chunk
        for chunk in _chunks(num_words, settings.kmeans_chunk):
            rows = embeddings[chunk][valid[chunk]].astype(np.float32)
            if len(rows):
                kmeans.partial_fit(rows)
    flat = np.full(num_words, IGNORED_WORD, dtype=np.int64)
    for chunk in _chunks(num_words, settings.kmeans_chunk):
        mask = valid[chunk]
        if mask.any():
            flat[chunk][mask] = kmeans.predict(embeddings[chunk][mask].astype(np.float32))
    del embeddings
    os.remove(path)
    return _split_per_sentence(flat, sentences), kmeans.cluster_centers_.astype(np.float32)


def _embed_and_fit(
    sentences: list[list[str]], settings: PseudoLabelSettings, kmeans: MiniBatchKMeans, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The first pass: every word's teacher embedding stored (fp16 memmap at `path`) and k-means fitted on the stream
    as chunks fill up; returns the embeddings and which words have one (words cut by the length limit do not)."""
    encoders = [load_teacher(name) for name in (settings.teacher, *settings.co_teachers)]
    hidden = sum(encoder.config.hidden_size for encoder, _ in encoders)
    num_words = sum(map(len, sentences))
    embeddings = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(num_words, hidden))
    valid = np.zeros(num_words, dtype=bool)
    pending: list[np.ndarray] = []
    row = 0
    for start in tqdm(range(0, len(sentences), settings.batch_size), desc="teacher word embeddings", unit="batch"):
        vectors, kept = joint_word_embeddings(
            encoders, sentences[start : start + settings.batch_size], settings.max_length
        )
        embeddings[row : row + len(kept)] = vectors.astype(np.float16)
        valid[row : row + len(kept)] = kept
        row += len(kept)
        pending.append(vectors[kept])
        if sum(len(p) for p in pending) >= max(settings.kmeans_chunk, settings.num_clusters):
            kmeans.partial_fit(np.concatenate(pending))
            pending = []
    leftover = np.concatenate(pending) if pending else np.empty((0, hidden), dtype=np.float32)
    if not hasattr(kmeans, "cluster_centers_") and len(leftover) < settings.num_clusters:
        raise ValueError(f"num_clusters={settings.num_clusters} is larger than the {int(valid.sum())} embedded words.")
    if len(leftover):
        kmeans.partial_fit(leftover)
    return embeddings, valid


def joint_word_embeddings(encoders: list, sentences: list[list[str]], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """One encoder: its word embeddings as they are. Several (the teacher and its co-teachers): each encoder's word
    embedding scaled to unit length, then concatenated, so that each encoder weighs the same in k-means' distances
    whatever its scale; a word is kept where every encoder has it (their tokenizers may truncate differently)."""
    if len(encoders) == 1:
        return embed_words(*encoders[0], sentences, max_length)
    parts, kept = [], None
    for encoder, tokenizer in encoders:
        vectors, encoder_kept = embed_words(encoder, tokenizer, sentences, max_length)
        parts.append(normalize(vectors))  # unit length per word (a zero vector stays zero)
        kept = encoder_kept if kept is None else kept & encoder_kept
    return np.concatenate(parts, axis=1), kept


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _split_per_sentence(flat: np.ndarray, sentences: list[list[str]]) -> list[list[int]]:
    bounds = np.cumsum([0] + [len(words) for words in sentences])
    return [flat[bounds[i] : bounds[i + 1]].tolist() for i in range(len(sentences))]


@torch.no_grad()
def embed_words(
    model: torch.nn.Module, tokenizer, sentences: list[list[str]], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Word embeddings = mean of the word's sub-token embeddings; words cut by truncation are marked not kept."""
    encoded = tokenizer(
        sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    tokens = model(**model_inputs(encoded)).last_hidden_state
    offsets = np.cumsum([0] + [len(words) for words in sentences])
    num_words = int(offsets[-1])
    rows, positions = [], []
    for index in range(len(sentences)):
        for position, word_id in enumerate(encoded.word_ids(index)):
            if word_id is not None:
                rows.append(offsets[index] + word_id)
                positions.append((index, position))
    flat_tokens = tokens[[p[0] for p in positions], [p[1] for p in positions]]
    row_index = torch.tensor(rows, dtype=torch.long)
    sums = torch.zeros(num_words, tokens.shape[-1]).index_add_(0, row_index, flat_tokens.float())
    counts = torch.zeros(num_words).index_add_(0, row_index, torch.ones(len(rows)))
    kept = (counts > 0).numpy()
    return (sums / counts.clamp(min=1).unsqueeze(-1)).numpy(), kept
