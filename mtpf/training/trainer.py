"""`MtpfTrainer`: a transformers Trainer whose optimizer step trains the scheduled tasks of that step.

Each task runs its own forward/backward with its own slot active (so a slot gets gradients only from its
task, the backbone from all); gradients add up, or go through PCGrad on the shared parameters. Parameters
of a task that did not run this step end with no gradient at all (not zeros), so AdamW leaves them alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mtpf.data.steps import single_item
from mtpf.io import atomic_write_text
from mtpf.pcgrad import flat_grad, project_conflicting, smallest_cosine, write_flat_grad
from mtpf.slots import slot_parameters
from mtpf.tasks import Task, TaskStep

logger = logging.getLogger(__name__)
RUN_INFO_FILE = "mtpf_run.json"  # written last into every checkpoint: the run's identity and the completion marker
# What must match to resume a checkpoint: a different mode or slot layout would load into the wrong modules
# (plus each task's own `resume_keys`, e.g. the NER head's number of clusters).
RESUME_KEYS = ("mode", "tasks", "uses_slots", "trains_backbone", "tpl_layers", "slot_layers", "slot_ranks")


class MtpfTrainer(Trainer):
    """The model is an `MtpfPretrainingModel`; its tasks say how each of their micro-steps runs."""

    def __init__(
        self,
        *args: Any,
        pcgrad: bool = False,
        run_info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.pcgrad = pcgrad
        self.run_info = run_info or {}
        self._task_losses: dict[str, list[float]] = defaultdict(list)
        self._gradient_cosines: list[float] = []  # PCGrad steps since the last log
        if pcgrad and self.args.gradient_accumulation_steps != 1:
            raise ValueError("PCGrad needs whole task gradients per step: set gradient_accumulation_steps=1.")

    @property
    def tasks(self) -> dict[str, Task]:
        return self.accelerator.unwrap_model(self.model).tasks

    def create_optimizer(self, model: nn.Module | None = None):
        """Trainer's AdamW over every trainable parameter (all slots included); a task's head may have its own rate."""
        optimizer = super().create_optimizer(model)
        if getattr(optimizer, "_mtpf_head_split", False):
            return optimizer
        core = self.accelerator.unwrap_model(self.model)
        if getattr(self.args, "slot_learning_rate", None) is not None:
            slots = [p for task in self.slot_rate_tasks() for p in slot_parameters(core.encoder, task).values()]
            move_to_own_group(optimizer, {id(p) for p in slots}, self.args.slot_learning_rate)
        heads = core.heads
        for name, head in heads.items():
            rate = self.tasks[name].head_learning_rate(self.args)
            if rate is not None:
                move_to_own_group(optimizer, {id(p) for p in head.parameters()}, rate)
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        optimizer._mtpf_head_split = True
        return optimizer

    def slot_rate_tasks(self) -> list[str]:
        """The tasks whose slots train at `slot_learning_rate` (`slot_learning_rate_tasks`, default all)."""
        chosen = getattr(self.args, "slot_learning_rate_tasks", None)
        if not chosen:
            return list(self.tasks)
        if unknown := sorted(set(chosen) - set(self.tasks)):
            raise ValueError(f"--slot_learning_rate_tasks {unknown}: not a task of this run ({sorted(self.tasks)}).")
        return list(chosen)

    # ----- data ---------------------------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        """Items are whole steps, already rank-specific: no sharding, no shuffling (batch_size=1 + unwrap)."""
        return DataLoader(self.train_dataset, batch_size=1, shuffle=False, collate_fn=single_item, num_workers=0)

    # ----- one optimizer micro-step -------------------------------------------------------------------

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        core = self.accelerator.unwrap_model(model)
        scale = 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        use_pcgrad = self.pcgrad and len(inputs) > 1
        shared = core.shared_parameters() if use_pcgrad else []
        task_gradients = []
        touched = [False] * len(shared)
        total = torch.zeros((), device=self.args.device)
        for task, batch in inputs.items():
            loss = self.scaled_task_backward(model, task, batch, scale)
            self._task_losses[task].append(loss.item() / scale)
            total = total + loss
            if use_pcgrad:
                task_gradients.append(flat_grad(shared))
                touched = [seen or p.grad is not None for seen, p in zip(touched, shared)]
                for p in shared:
                    p.grad = None
        if use_pcgrad:
            self._gradient_cosines.append(smallest_cosine(task_gradients))
            write_flat_grad(shared, project_conflicting(task_gradients), touched)
        for task in self.run_info.get("tasks", ()):
            if task not in inputs:
                for p in core.task_parameters(task):
                    p.grad = None
        return total.detach()

    def scaled_task_backward(
        self, model: nn.Module, task: str, batch: dict[str, torch.Tensor], scale: float
    ) -> torch.Tensor:
        """`task_backward`, with the task's gradient into the shared backbone scaled by its `backbone_gradient_scale`
        (its slot and head keep their whole gradient; other tasks' gradients already accumulated are untouched)."""
        factor = self.tasks[task].backbone_gradient_scale
        if factor == 1.0:
            return self.task_backward(model, task, batch, scale)
        shared = self.accelerator.unwrap_model(model).shared_parameters()
        earlier = [p.grad for p in shared]
        for p in shared:
            p.grad = None
        loss = self.task_backward(model, task, batch, scale)
        for p, old in zip(shared, earlier):
            if p.grad is not None:
                p.grad.mul_(factor)
            if old is not None:
                p.grad = old if p.grad is None else p.grad.add_(old)
        return loss

    def task_backward(self, model: nn.Module, task: str, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        """Forward and backward of one task's batch, as the task defines its step; returns its scaled loss."""

        def forward(features: dict[str, torch.Tensor]) -> torch.Tensor:
            with self.compute_loss_context_manager():
                return model(task=task, **features)

        step = TaskStep(
            forward=forward,
            backward=self.accelerator.backward,
            no_sync=lambda: model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext(),
        )
        return self.tasks[task].backward(step, batch, scale)

    # ----- logging and checkpoints --------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add, since the last log, each task's mean loss (loss_ner, loss_tc) and under PCGrad how often the shared
        gradients conflicted (pcgrad_conflicts: share of steps with a negative cosine; grad_cosine: its mean)."""
        if "loss" in logs:
            for task, values in self._task_losses.items():
                if values:
                    logs[f"loss_{task}"] = round(sum(values) / len(values), 4)
            if self._gradient_cosines:
                cosines = self._gradient_cosines
                logs["grad_cosine"] = round(sum(cosines) / len(cosines), 4)
                logs["pcgrad_conflicts"] = round(sum(c < 0 for c in cosines) / len(cosines), 4)
            self._task_losses.clear()
            self._gradient_cosines = []
        super().log(logs, start_time)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, then the run's identity written last (the completion marker), then rotation.

        A save killed half-way leaves a folder without the marker, which `newest_complete_checkpoint` skips;
        old checkpoints are deleted only once the new one is complete.
        """
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if not self.args.should_save:
            return
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        atomic_write_text(folder / RUN_INFO_FILE, json.dumps(self.run_info, indent=2) + "\n")
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        task_keys = tuple(key for task in self.tasks.values() for key in task.resume_keys)
        check_resume_compatible(resume_from_checkpoint, self.run_info, task_keys)
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def move_to_own_group(optimizer: torch.optim.Optimizer, ids: set[int], learning_rate: float) -> None:
    """Move the parameters with these ids out of their groups into new ones (same settings) at `learning_rate`."""
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in ids]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group(
                {**{k: v for k, v in group.items() if k != "params"}, "params": moved, "lr": learning_rate}
            )


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` whose save finished (it holds the run marker); skipped ones are logged."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = {}
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            steps[int(step)] = path
    for step in sorted(steps, reverse=True):
        if (steps[step] / RUN_INFO_FILE).is_file():
            return str(steps[step])
        logger.warning(
            "Skipping %s: incomplete (no %s, its save was interrupted); trying an older checkpoint.",
            steps[step],
            RUN_INFO_FILE,
        )
    return None


def check_resume_compatible(
    checkpoint: str | os.PathLike, run_info: dict[str, Any], task_keys: tuple[str, ...] = ()
) -> None:
    """Refuse a checkpoint written by a run of another mode, slot layout or task setup, naming what differs."""
    path = Path(checkpoint) / RUN_INFO_FILE
    if not path.is_file():
        raise ValueError(f"{checkpoint}: not an mtpf checkpoint ({RUN_INFO_FILE} missing).")
    saved = json.loads(path.read_text(encoding="utf-8"))
    differences = {
        key: (saved.get(key), run_info.get(key))
        for key in (*RESUME_KEYS, *task_keys)
        if _normalise(saved.get(key)) != _normalise(run_info.get(key))
    }
    if differences:
        details = ", ".join(f"{key}: checkpoint {old!r} vs this run {new!r}" for key, (old, new) in differences.items())
        raise ValueError(f"Cannot resume from {checkpoint}: it belongs to another run ({details}).")


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
