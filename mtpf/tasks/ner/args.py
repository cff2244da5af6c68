"""The NER task's own arguments (`train_mtpf.py --ner_batch_size ...`), registered with the task."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtpf.data.roots import UNLABELED_DATA


@dataclass
class NerArguments:
    """The unlabeled corpus, the teacher, its pseudo-labels and the NER batches."""

    ner_corpus: list[str] = field(
        default_factory=lambda: [f"{UNLABELED_DATA}/wikipedia_en_sentences_altlex.txt"],
        metadata={"help": "Unlabeled text files (one sentence per line) for NER distillation."},
    )
    teacher: str = field(default="numind/NuNER-v1.0", metadata={"help": "NER teacher encoder (folder or Hub id)."})
    co_teachers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Further encoders (folder, Hub id, offline:NAME) whose word embeddings join the teacher's before "
            "k-means: each encoder's embedding at unit length, concatenated, so each weighs the same (e.g. the "
            "student's own base keeps the word groups it has, the teacher adds its entity types). Unset: the teacher "
            "alone, as it embeds."
        },
    )
    num_clusters: int = field(default=200, metadata={"help": "k of the k-means pseudo-labels."})
    max_ner_sentences: int | None = field(default=None, metadata={"help": "Cap on corpus sentences (None: all)."})
    ner_batch_size: int = field(default=256, metadata={"help": "Sentences per NER batch, over all processes."})
    ner_length_buckets: int = field(
        default=0,
        metadata={"help": "Sort each run of N shuffled NER batches by length before cutting them (0: off)."},
    )
    ner_backbone_grad_scale: float = field(
        default=1.0,
        metadata={
            "help": "Scale of the NER loss's gradient into the shared backbone (1: all of it; 0: NER trains only "
            "its slot and head, so the backbone moves by TC alone)."
        },
    )
    pseudo_label_dir: str = field(default="outputs/pseudo-labels", metadata={"help": "Pseudo-label cache folder."})

    def validate(self) -> None:
        """Reject impossible sizes up front, naming the flag, instead of failing after a training step."""
        for name, minimum in {"ner_batch_size": 1, "num_clusters": 2}.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name} {getattr(self, name)}: must be at least {minimum}.")
        if self.max_ner_sentences is not None and self.max_ner_sentences < 1:
            raise ValueError(f"--max_ner_sentences {self.max_ner_sentences}: must be positive (or unset: all).")
