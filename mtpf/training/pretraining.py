"""The module that pre-finetuning trains: the encoder (with or without task slots) plus each task's head."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from torch import nn

from modeling_mtpf import MtpfModel
from mtpf.data.tokens import model_inputs
from mtpf.slots import activate_slot, attach_slots, backbone_parameters, slot_parameters
from mtpf.tasks import Task


class MtpfPretrainingModel(nn.Module):
    """`forward(task=..., **features)`: what that task's `compute` makes of the encoder's output (a loss, or
    sentence embeddings for a task whose step needs them).

    With slots, each forward routes through its task's slot first, so only that task's loss reaches it.
    """

    def __init__(
        self,
        encoder: MtpfModel | PeftModel,
        tasks: dict[str, Task],
        uses_slots: bool,
        trains_backbone: bool = True,
    ) -> None:
        super().__init__()
        if not uses_slots and not trains_backbone:
            raise ValueError("A frozen backbone without slots would train nothing.")
        self.encoder = encoder
        self.tasks = dict(tasks)
        self.uses_slots = uses_slots
        self.trains_backbone = trains_backbone
        self.config = encoder.config
        heads = {name: task.head(encoder.config.hidden_size) for name, task in self.tasks.items()}
        self.heads = nn.ModuleDict({name: head for name, head in heads.items() if head is not None})

    def select_task(self, task: str) -> None:
        if self.uses_slots:
            activate_slot(self.encoder, task, train_backbone=self.trains_backbone)

    def forward(self, task: str, labels: torch.Tensor | None = None, **features: torch.Tensor) -> torch.Tensor:
        if task not in self.tasks:
            raise ValueError(f"Unknown task {task!r}; this run trains {sorted(self.tasks)}.")
        self.select_task(task)
        output = self.encoder(**model_inputs(features))
        return self.tasks[task].compute(self.head_of(task), output, labels)

    def head_of(self, task: str) -> nn.Module | None:
        """The task's head (nn.ModuleDict has no `get`)."""
        return self.heads[task] if task in self.heads else None  # noqa: SIM401

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters that only `task` trains: its slot and its head."""
        head = self.head_of(task)
        return [*slot_parameters(self.encoder, task).values(), *(head.parameters() if head is not None else ())]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that every task updates (the backbone)."""
        return [p for p in backbone_parameters(self.encoder).values() if p.requires_grad]

    def release_model(self) -> PeftModel:
        """The encoder with every slot as a PEFT adapter (identity slots for slot-less modes), for export."""
        if isinstance(self.encoder, PeftModel):
            return self.encoder
        return attach_slots(copy.deepcopy(self.encoder))
