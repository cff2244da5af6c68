"""The module that pre-finetuning trains: the encoder (with or without task slots) plus the NER pseudo-label head."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from torch import nn

from modeling_mtpf import MtpfModel
from mtpf.losses.pseudo_label_ce import pseudo_label_cross_entropy
from mtpf.slots import activate_slot, attach_slots, backbone_parameters, slot_parameters


class MtpfPretrainingModel(nn.Module):
    """`forward(task=..., **features)`: NER returns the pseudo-label CE loss, TC returns sentence embeddings.

    With slots, each forward routes through its task's slot first, so only that task's loss reaches it.
    """

    def __init__(
        self,
        encoder: MtpfModel | PeftModel,
        num_clusters: int | None,
        uses_slots: bool,
        trains_backbone: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.uses_slots = uses_slots
        self.trains_backbone = trains_backbone
        self.config = encoder.config
        hidden = encoder.config.hidden_size
        self.ner_head = nn.Linear(hidden, num_clusters) if num_clusters else None
        if self.ner_head is not None:
            nn.init.normal_(self.ner_head.weight, std=0.02)
            nn.init.zeros_(self.ner_head.bias)
        if not uses_slots and not trains_backbone:
            raise ValueError("A frozen backbone without slots would train nothing.")

    def select_task(self, task: str) -> None:
        if self.uses_slots:
            activate_slot(self.encoder, task, train_backbone=self.trains_backbone)

    def forward(self, task: str, labels: torch.Tensor | None = None, **features: torch.Tensor) -> torch.Tensor:
        self.select_task(task)
        features = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        output = self.encoder(**features)
        if task == "tc":
            return output.pooler_output
        if task == "ner":
            if self.ner_head is None or labels is None:
                raise ValueError("The NER pass needs the pseudo-label head and labels.")
            return pseudo_label_cross_entropy(self.ner_head(output.last_hidden_state), labels)
        raise ValueError(f"Unknown task {task!r}.")

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters that only `task` trains: its slot and, for NER, the pseudo-label head."""
        params = list(slot_parameters(self.encoder, task).values())
        if task == "ner" and self.ner_head is not None:
            params += list(self.ner_head.parameters())
        return params

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that both tasks update (the backbone)."""
        return [p for p in backbone_parameters(self.encoder).values() if p.requires_grad]

    def release_model(self) -> PeftModel:
        """The encoder with every slot as a PEFT adapter (identity slots for slot-less modes), for export."""
        if isinstance(self.encoder, PeftModel):
            return self.encoder
        return attach_slots(copy.deepcopy(self.encoder))
