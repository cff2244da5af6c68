"""How well an encoder's word clusters line up with gold entity types: the quality of a pseudo-label source.

The NER objective distils a teacher's k-means word clusters (K=200). Distillation can only teach the student the
entity structure those clusters hold, so comparing the teacher's clusters with the student's own (same words, same
K) tells a weak teacher from a short budget when pre-finetuning does not help NER.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from peft import PeftModel
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from mtpf.apps.ner.data import load_ner_dataset
from mtpf.data.conll import TaggedSentence
from mtpf.data.roots import NER_DATA
from mtpf.io import atomic_write_text
from mtpf.models import split_label
from mtpf.pseudo_labels import joint_word_embeddings
from mtpf.slots import activate_slot
from mtpf.training.downstream import subsample

logger = logging.getLogger(__name__)
OUTSIDE = "O"
MAX_LENGTH, BATCH_SIZE = 128, 64  # sub-tokens per sentence and sentences per forward, as the pseudo-labeller


def entity_type(tag: str) -> str:
    """`B-PER`/`I-PER` -> `PER`; `O` stays `O`."""
    return OUTSIDE if tag == OUTSIDE else tag.split("-", 1)[-1]


def cluster_agreement(clusters: np.ndarray, types: list[str]) -> dict[str, float]:
    """NMI between clusters and gold types over all words, and the entity purity.

    Entity purity: the share of entity words whose cluster's majority type (O included) is their own type, so an
    entity lost in an O-dominated cluster counts as wrong. 1.0 means k-means alone would type every entity word.
    """
    if len(clusters) != len(types):
        raise ValueError(f"{len(clusters)} cluster ids for {len(types)} words.")
    names, gold = np.unique(np.asarray(types), return_inverse=True)
    counts = contingency_matrix(gold, clusters)  # gold type x cluster
    majority = counts.argmax(axis=0)  # per cluster
    entity = names != OUTSIDE
    entity_words = int(counts[entity].sum())
    typed = sum(int(counts[t, majority == t].sum()) for t in np.flatnonzero(entity))
    purity = typed / max(1, entity_words)
    return {
        "nmi": round(float(normalized_mutual_info_score(types, clusters)), 4),
        "entity_purity": round(float(purity), 4),
        "words": len(types),
        "entity_words": entity_words,
    }


def word_cluster_quality(
    encoders: list[tuple], sentences: list[TaggedSentence], *, num_clusters: int = 200, seed: int = 0
) -> dict[str, float]:
    """Embed every word as the pseudo-labeller does (mean of sub-tokens; with several (model, tokenizer) encoders,
    side by side as a teacher and its co-teachers), cluster with k-means, score vs gold."""
    vectors, types = [], []
    for start in range(0, len(sentences), BATCH_SIZE):
        batch = sentences[start : start + BATCH_SIZE]
        embedded, kept = joint_word_embeddings(encoders, [s.tokens for s in batch], MAX_LENGTH)
        vectors.append(embedded[kept])
        tags = [tag for s in batch for tag in s.tags]
        types += [entity_type(tag) for tag, keep in zip(tags, kept) if keep]
    words = np.concatenate(vectors)
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, n_init=3, batch_size=4096)
    return cluster_agreement(kmeans.fit_predict(words), types)


def ner_view(name_or_path: str):
    """The encoder as downstream NER starts from it: a release with its `ner` slot active, else the bare encoder."""
    from mtpf.analysis.tracking import load_for_analysis

    encoder, tokenizer = load_for_analysis(name_or_path)
    if isinstance(encoder, PeftModel):
        activate_slot(encoder, "ner" if "ner" in encoder.peft_config else None)
    return encoder.eval(), tokenizer


@dataclass
class ClusterArguments:
    """Do an encoder's k-means word clusters follow entity types? (the quality of a pseudo-label source)"""

    output: str = field(metadata={"help": "Folder for cluster_quality.json."})
    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Teachers, encoders or releases (ner slot active); LABEL=PATH names one; PATH+PATH2 clusters "
            "them side by side, as a teacher with co-teachers (`--co_teachers`)."
        },
    )
    datasets: list[str] = field(
        default_factory=lambda: ["conll2003", "ontonotes5", "mit_restaurant", "jnlpba", "crossner"],
        metadata={"help": "Local NER datasets whose --split is clustered."},
    )
    ner_data_root: str = field(default=NER_DATA, metadata={"help": "Local NER datasets."})
    split: str = field(default="test", metadata={"help": "Split clustered (train to decide, test to report)."})
    sentences: int = field(default=2000, metadata={"help": "Sentences per dataset (seeded subset of the split)."})
    num_clusters: int = field(default=200, metadata={"help": "K of k-means (the paper's pseudo-labels: 200)."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset and of k-means."})


def cluster_quality(arguments: ClusterArguments) -> Path:
    """Cluster quality of every model (a release: backbone + `ner` slot) on the test split of every dataset."""
    datasets, sentences, num_clusters, seed = (
        arguments.datasets,
        arguments.sentences,
        arguments.num_clusters,
        arguments.seed,
    )
    data = {name: subsample(_split(name, arguments), 1.0, sentences, seed) for name in datasets}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for spec in arguments.models:
        label, paths = split_label(spec)
        encoders = [ner_view(path) for path in paths.split("+")]
        results[label] = {
            dataset: word_cluster_quality(encoders, rows, num_clusters=num_clusters, seed=seed)
            for dataset, rows in data.items()
        }
        logger.info("%s: %s", label, results[label])
    settings = {
        "datasets": datasets,
        "split": arguments.split,
        "sentences": sentences,
        "num_clusters": num_clusters,
        "seed": seed,
    }
    payload = {"settings": settings, "models": results}
    target = Path(arguments.output) / "cluster_quality.json"
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(target.with_suffix(".md"), cluster_quality_markdown(payload))
    return target


def _split(dataset: str, arguments: ClusterArguments) -> list[TaggedSentence]:
    splits = load_ner_dataset(dataset, arguments.ner_data_root)
    if arguments.split not in splits:
        raise ValueError(f"--split {arguments.split}: {dataset} has the splits {', '.join(splits)}.")
    return splits[arguments.split]


def cluster_quality_markdown(payload: dict) -> str:
    """Entity purity and NMI per model and dataset, as two tables (the `cluster_quality.json` numbers)."""
    models = payload["models"]
    datasets = payload["settings"]["datasets"]
    settings = payload["settings"]
    lines = [
        "# Word-cluster quality against gold entity types",
        "",
        f"k-means with K={settings['num_clusters']} on the word embeddings (mean of sub-tokens) of "
        f"{settings['sentences']} seeded {settings.get('split', 'test')} sentences per dataset; "
        f"seed {settings['seed']}.",
    ]
    for metric, title in (("entity_purity", "Entity purity"), ("nmi", "NMI (all words)")):
        lines += [
            "",
            f"## {title}",
            "",
            f"| Model | {' | '.join(datasets)} | Average |",
            "|---" * (len(datasets) + 2) + "|",
        ]
        for model, scores in models.items():
            values = [scores[d][metric] for d in datasets]
            cells = " | ".join(f"{v:.3f}" for v in values)
            lines.append(f"| `{model}` | {cells} | {sum(values) / len(values):.3f} |")
    return "\n".join(lines) + "\n"
