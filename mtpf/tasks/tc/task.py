"""TC pre-finetuning (paper Sec. 4): InfoNCE on text pairs with in-batch negatives, optionally gradient-cached."""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from mtpf.data.padding import embed_by_length
from mtpf.data.pairs import describe_sources, load_pair_sources
from mtpf.losses.anchor import EmbeddingAnchor
from mtpf.losses.cached_info_nce import CachedInfoNCE
from mtpf.losses.info_nce import InfoNCELoss
from mtpf.tasks.base import StepBatches, Task, TaskContext, TaskStep
from mtpf.tasks.tc.args import TcArguments
from mtpf.tasks.tc.batches import TcBatches

logger = logging.getLogger(__name__)


class TcTask(Task):
    """Anchors then positives in one batch; the loss scores each anchor against every positive (all ranks').

    `length_chunk` N > 0 embeds each batch in length-sorted chunks of N texts, each padded only to its own longest
    (with gradient caching: length-sorted mini-batches); the loss is the same, the padded positions far fewer.
    `anchor_weight` λ > 0 adds λ·mean(1 − cos) between the batch's embeddings and the frozen starting encoder's
    embeddings of the same texts (`mtpf/losses/anchor.py`), so the shared backbone keeps what the base embeds well.
    """

    name = "tc"
    arguments = TcArguments
    result_family = "tc"  # downstream: MTEB classification probes (mtpf/evaluation/tc.py)
    family_tag = "text-classification"
    family_title = "Text classification"

    def __init__(self, arguments: TcArguments, max_length: int = 128) -> None:
        mini_batch_size, length_chunk = arguments.tc_mini_batch_size, arguments.tc_length_chunk
        anchor_weight = arguments.tc_anchor_weight
        if anchor_weight and mini_batch_size:
            raise ValueError("--tc_anchor_weight cannot be combined with gradient caching (--tc_mini_batch_size).")
        if anchor_weight < 0:
            raise ValueError(f"--tc_anchor_weight {anchor_weight}: must be 0 (off) or positive.")
        self.pairs, self.batch_size, self.max_length = arguments.pair_paths(), arguments.tc_batch_size, max_length
        self.anchor_weight = anchor_weight
        self.anchor: EmbeddingAnchor | None = None  # built with the batches, from the run's frozen base
        self.pair_sampling_temperature = arguments.pair_sampling_temperature
        self.length_chunk = length_chunk
        self.loss = InfoNCELoss(arguments.temperature)
        self.grad_cache = (
            CachedInfoNCE(self.loss, mini_batch_size, sort_by_length=length_chunk > 0) if mini_batch_size else None
        )

    @classmethod
    def from_args(cls, data_args: Any) -> TcTask:
        own = TcArguments(**{option.name: getattr(data_args, option.name) for option in fields(TcArguments)})
        return cls(own, max_length=data_args.max_seq_length)

    @property
    def needs_base_encoder(self) -> bool:
        return self.anchor_weight > 0

    def build_batches(self, context: TaskContext) -> StepBatches:
        if self.anchor_weight > 0:
            if context.base_encoder is None:
                raise ValueError("The TC anchor needs the run's frozen base encoder (TaskContext.base_encoder).")
            self.anchor = EmbeddingAnchor(context.base_encoder, self.anchor_weight)
        sources = load_pair_sources(self.pairs)
        logger.info("Text pairs: %s", describe_sources(sources))
        return TcBatches(
            sources, context, self.batch_size, max_length=self.max_length, temperature=self.pair_sampling_temperature
        )

    def compute(self, head: nn.Module | None, output: Any, labels: torch.Tensor | None) -> torch.Tensor:
        return output.pooler_output  # the model's sentence embedding (one definition: MtpfModel.pool)

    def backward(self, step: TaskStep, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        num_pairs = len(batch["input_ids"]) // 2
        if self.grad_cache is not None:
            return self.grad_cache(step, batch, num_pairs, scale)
        embeddings = embed_by_length(step.forward, batch, self.length_chunk)
        loss = self.loss(embeddings[:num_pairs], embeddings[num_pairs:])
        if self.anchor is not None:
            loss = loss + self.anchor(embeddings, batch)
        loss = loss * scale
        step.backward(loss)
        return loss.detach()

    def run_info(self, data_args: Any) -> dict[str, Any]:
        # options recorded only when on, so runs written before they existed still resume
        chunking = {"tc_length_chunk": self.length_chunk} if self.length_chunk else {}
        anchor = {"tc_anchor_weight": self.anchor_weight} if self.anchor_weight else {}
        cached = {"tc_mini_batch_size": self.grad_cache.mini_batch_size} if self.grad_cache else {}
        flatter = self.pair_sampling_temperature != 1.0  # which datasets the batches come from: a quality lever
        sampling = {"pair_sampling_temperature": self.pair_sampling_temperature} if flatter else {}
        return {"tc_batch_size": self.batch_size, "pairs": data_args.pairs, **chunking, **anchor, **cached, **sampling}
