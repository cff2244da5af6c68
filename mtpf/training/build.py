"""A pre-finetuning run from its arguments: the model with its slots, the run's tasks and their batches, the
trainer; then the release it ends in."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from transformers import set_seed

from mtpf.analysis.tracking import AnalysisSet, InterferenceCallback
from mtpf.data.steps import MultiTaskStepDataset, TaskSchedule
from mtpf.interpolation import Interpolation, interpolate_release
from mtpf.release import export_release, load_mtpf_encoder
from mtpf.slots import attach_slots
from mtpf.tasks import Task, TaskContext, get_task
from mtpf.training.args import DataArguments, ModelArguments, MtpfTrainingArguments
from mtpf.training.pretraining import MtpfPretrainingModel
from mtpf.training.trainer import MtpfTrainer, newest_complete_checkpoint

logger = logging.getLogger(__name__)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, args: MtpfTrainingArguments) -> MtpfTrainer:
    """Everything a run needs: model (with slots per mode), per-step data of each task, and the trainer."""
    set_seed(args.seed)  # before any weight is initialised (LoRA A, the task heads)
    model, tokenizer = load_mtpf_encoder(model_args.backbone, tasks=model_args.slots, **model_args.slot_kwargs())
    tasks: dict[str, Task] = {name: get_task(name).from_args(data_args) for name in model_args.tasks}
    base = copy.deepcopy(model) if any(task.needs_base_encoder for task in tasks.values()) else None
    if model_args.uses_slots:
        model = attach_slots(
            model, list(model_args.slots), train_backbone=model_args.trains_backbone, fused=model_args.fused_lora
        )
    context = TaskContext(
        tokenizer, args.seed, args.process_index, args.world_size, args.main_process_first, base_encoder=base
    )
    batches = {name: task.build_batches(context) for name, task in tasks.items()}
    schedule = TaskSchedule(model_args.tasks, data_args.task_schedule, data_args.task_ratio)
    steps = MultiTaskStepDataset(args.max_steps * args.gradient_accumulation_steps, schedule, batches)
    wrapper = MtpfPretrainingModel(model, tasks, model_args.uses_slots, model_args.trains_backbone)
    trainer = MtpfTrainer(
        model=wrapper,
        args=args,
        train_dataset=steps,
        processing_class=tokenizer,
        pcgrad=model_args.pcgrad,
        run_info=run_info(model_args, data_args, tasks),
    )
    if data_args.analysis_steps:
        analysis = AnalysisSet.from_conll(data_args.analysis_data, data_args.analysis_sentences, seed=args.seed)
        label = model_args.mode + ("+pcgrad" if model_args.pcgrad else "")
        trainer.add_callback(InterferenceCallback(analysis, tokenizer, data_args.analysis_steps, label))
    return trainer


def run_info(model_args: ModelArguments, data_args: DataArguments, tasks: dict[str, Task]) -> dict[str, Any]:
    """The run's identity: checked on resume, recorded in the release's config (`pretraining`)."""
    info: dict[str, Any] = {
        "mode": model_args.mode,
        "tasks": list(model_args.tasks),
        "uses_slots": model_args.uses_slots,
        "trains_backbone": model_args.trains_backbone,
        "tpl_layers": model_args.tpl_layers,
        **({"slot_layers": model_args.layers_by_task()} if model_args.slot_layers else {}),
        **({"slot_ranks": model_args.ranks_by_task()} if model_args.slot_ranks else {}),
        "backbone": model_args.backbone,
        "pcgrad": model_args.pcgrad,
        "task_schedule": data_args.task_schedule,
        "task_ratio": data_args.task_ratio,
    }
    for task in tasks.values():
        info.update(task.run_info(data_args))
    return info


def resolve_resume(args: MtpfTrainingArguments) -> str | None:
    """`last`/`auto` -> the newest complete checkpoint in output_dir (None, said in the log, when there is none)."""
    if args.resume_from_checkpoint in ("last", "auto"):
        checkpoint = newest_complete_checkpoint(args.output_dir)
        if checkpoint is None:
            logger.warning("No complete checkpoint in %s to resume from: training from step 0.", args.output_dir)
        return checkpoint
    return args.resume_from_checkpoint


def export(trainer: MtpfTrainer, data_args: DataArguments) -> Path:
    """Write the release: backbone + one adapter per slot, with the run's recipe recorded in the config."""
    wrapper: MtpfPretrainingModel = trainer.accelerator.unwrap_model(trainer.model)
    release_model = wrapper.release_model()
    trained = set(trainer.run_info["tasks"]) if wrapper.uses_slots else set()
    for task, slot in release_model.config.task_slots.items():
        slot["trained"] = task in trained
    rates = {name: getattr(trainer.args, name, None) for name in ("slot_learning_rate", "slot_learning_rate_tasks")}
    release_model.config.pretraining = {
        **trainer.run_info,
        "steps": trainer.state.global_step,
        **{name: value for name, value in rates.items() if value is not None},  # recorded when set, as run_info's
    }
    output = Path(data_args.release_dir or Path(trainer.args.output_dir) / "release")
    if data_args.release_interpolation is None:
        # a run replaces its own earlier release; a folder of anything else is still refused
        return export_release(release_model, trainer.processing_class, output, overwrite=True)
    trained = export_release(
        release_model, trainer.processing_class, Path(trainer.args.output_dir) / "release-trained", overwrite=True
    )
    interpolation = Interpolation(data_args.release_interpolation, data_args.release_layer_alphas)
    return interpolate_release(trained, output, interpolation, overwrite=True)
