"""What a pre-finetuning task is: its batches, its head, its loss and step, and what a run records about it.

A task is one class, registered under its name (`mtpf.tasks.register_task`); each run builds its tasks from the
run's arguments (`Task.from_args`). The trainer, the pretraining model and `build_trainer` only loop over the
run's tasks: adding a task touches its own folder and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

StepBatches = Callable[[int], dict[str, torch.Tensor]]  # this rank's batch of a task's k-th step, a pure function


@dataclass
class TaskContext:
    """What building a task's batches may use: the tokenizer, the run's seed and this process's place in the world."""

    tokenizer: PreTrainedTokenizerBase
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    main_process_first: Callable[[str], contextlib.AbstractContextManager] = lambda desc: contextlib.nullcontext()
    base_encoder: nn.Module | None = None  # a frozen copy of the starting encoder, for tasks that anchor to it


@dataclass
class TaskStep:
    """The trainer's side of one task's micro-step: run the model on a batch, backpropagate, skip DDP's sync."""

    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor]  # model(task=..., **features) under autocast
    backward: Callable[[torch.Tensor], None]
    no_sync: Callable[[], contextlib.AbstractContextManager]


class Task:
    """One pre-finetuning objective with its own task-primary slot.

    Subclasses set `name` and implement `build_batches` and `compute`; a task with task-only parameters besides its
    slot returns them from `head`; a task whose step is more than "loss, backward" (gradient caching, pairs)
    overrides `backward`. `result_family` names the downstream protocol whose scores judge the task (`None`: none).
    """

    name: ClassVar[str]
    result_family: ClassVar[str | None] = None
    family_tag: ClassVar[str] = "feature-extraction"  # the Hub pipeline tag of its result family
    family_title: ClassVar[str] = ""  # how model cards name the family
    resume_keys: ClassVar[tuple[str, ...]] = ()  # run-info fields that must match to resume a checkpoint
    # The task's own options: a dataclass parsed with the run's arguments (YAML keys and flags), read in `from_args`.
    arguments: ClassVar[type | None] = None
    # How much of this task's gradient reaches the shared backbone (1: all; 0: it trains only its slot and head).
    backbone_gradient_scale: float = 1.0

    @classmethod
    def from_args(cls, data_args: Any) -> Task:
        """The task configured from a run's DataArguments."""
        return cls()

    @property
    def needs_base_encoder(self) -> bool:
        """Whether building this task needs `TaskContext.base_encoder` (a frozen copy costs a model's memory)."""
        return False

    def build_batches(self, context: TaskContext) -> StepBatches:
        raise NotImplementedError

    def head(self, hidden_size: int) -> nn.Module | None:
        """Parameters only this task trains besides its slot (None: the slot alone)."""
        return None

    def head_learning_rate(self, training_args: Any) -> float | None:
        """A learning rate of its own for the head (None: the run's)."""
        return None

    def compute(self, head: nn.Module | None, output: Any, labels: torch.Tensor | None) -> torch.Tensor:
        """From the encoder's output (`last_hidden_state`, `pooler_output`) to what `backward` needs."""
        raise NotImplementedError

    def backward(self, step: TaskStep, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        """One micro-step: by default the model returns the loss; returns the scaled loss, detached."""
        loss = step.forward(batch) * scale
        step.backward(loss)
        return loss.detach()

    def run_info(self, data_args: Any) -> dict[str, Any]:
        """What the run records about this task (in checkpoints and in the release's `pretraining`)."""
        return {}
