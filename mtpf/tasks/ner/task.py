"""NER pre-finetuning (paper Sec. 4): the student's first sub-tokens learn the teacher's k-means word clusters."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mtpf.losses.pseudo_label_ce import pseudo_label_cross_entropy
from mtpf.pseudo_labels import PseudoLabelSettings, load_or_build_pseudo_labels
from mtpf.tasks.base import StepBatches, Task, TaskContext
from mtpf.tasks.ner.args import NerArguments
from mtpf.tasks.ner.batches import NerBatches

logger = logging.getLogger(__name__)


class NerTask(Task):
    """Pseudo-label distillation: a linear head over token embeddings, cross-entropy against cluster ids."""

    name = "ner"
    arguments = NerArguments
    result_family = "ner"  # downstream: LoRA fine-tuning, seqeval entity F1 (mtpf/apps/ner/train.py)
    family_tag = "token-classification"
    family_title = "Named entity recognition"
    resume_keys = ("num_clusters", "ner_length_buckets")

    def __init__(
        self,
        pseudo_labels: PseudoLabelSettings,
        batch_size: int = 256,
        length_buckets: int = 0,
        backbone_gradient_scale: float = 1.0,
    ) -> None:
        if backbone_gradient_scale < 0:
            raise ValueError(f"--ner_backbone_grad_scale {backbone_gradient_scale}: must be 0 or positive.")
        self.pseudo_labels, self.batch_size, self.length_buckets = pseudo_labels, batch_size, length_buckets
        self.num_clusters = pseudo_labels.num_clusters
        self.backbone_gradient_scale = backbone_gradient_scale

    @classmethod
    def from_args(cls, data_args: Any) -> NerTask:
        settings = PseudoLabelSettings(
            teacher=data_args.teacher,
            corpus=list(data_args.ner_corpus),
            co_teachers=list(data_args.co_teachers or []),
            num_clusters=data_args.num_clusters,
            max_sentences=data_args.max_ner_sentences,
            max_length=data_args.max_seq_length,
            cache_dir=data_args.pseudo_label_dir,
        )
        return cls(
            settings,
            data_args.ner_batch_size,
            data_args.ner_length_buckets,
            backbone_gradient_scale=data_args.ner_backbone_grad_scale,
        )

    def build_batches(self, context: TaskContext) -> StepBatches:
        settings = replace(self.pseudo_labels, seed=context.seed)  # the clustering follows the run's seed
        with context.main_process_first("pseudo-labels"):
            corpus = load_or_build_pseudo_labels(settings)
        return NerBatches(
            corpus, context, self.batch_size, max_length=settings.max_length, length_buckets=self.length_buckets
        )

    def head(self, hidden_size: int) -> nn.Module:
        head = nn.Linear(hidden_size, self.num_clusters)
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    def head_learning_rate(self, training_args: Any) -> float | None:
        return getattr(training_args, "ner_head_learning_rate", None)

    def compute(self, head: nn.Module | None, output: Any, labels: torch.Tensor | None) -> torch.Tensor:
        if head is None or labels is None:
            raise ValueError("The NER pass needs the pseudo-label head and labels.")
        return pseudo_label_cross_entropy(head(output.last_hidden_state), labels)

    def run_info(self, data_args: Any) -> dict[str, Any]:
        return {
            "num_clusters": self.num_clusters,
            "ner_batch_size": self.batch_size,
            "ner_corpus": data_args.ner_corpus,
            "max_ner_sentences": self.pseudo_labels.max_sentences,  # how much of the corpus (None: all)
            "teacher": self.pseudo_labels.teacher,
            **({"co_teachers": self.pseudo_labels.co_teachers} if self.pseudo_labels.co_teachers else {}),
            # recorded only when on, so checkpoints written before the option existed still resume
            **({"ner_length_buckets": self.length_buckets} if self.length_buckets > 1 else {}),
            **({"ner_backbone_grad_scale": self.backbone_gradient_scale} if self.backbone_gradient_scale != 1 else {}),
        }
