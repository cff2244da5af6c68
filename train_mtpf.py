"""Pre-finetune an encoder (MTPF-TPL or a baseline) and export a Hub-ready release folder.

    python train_mtpf.py configs/demo.yaml [--key value ...]
    torchrun --nproc_per_node 2 train_mtpf.py configs/demo.yaml      # data parallel (gloo on CPU, NCCL on GPU)

Modes: pf_ner, pf_tc (individual), mtpf (naive, no slots), mtpf_tpl (task-primary LoRAs), pf_lora (frozen
backbone). `--resume_from_checkpoint last` continues from the newest checkpoint in output_dir.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from transformers import set_seed

from mtpf.analysis.tracking import AnalysisSet, InterferenceCallback
from mtpf.args import DataArguments, ModelArguments, MtpfTrainingArguments, parse_args
from mtpf.data.pairs import describe_sources, load_pair_sources
from mtpf.data.steps import MultiTaskStepDataset, NerBatches, TaskSchedule, TcBatches
from mtpf.losses.info_nce import InfoNCELoss
from mtpf.pretraining import MtpfPretrainingModel
from mtpf.pseudo_labels import PseudoLabelSettings, load_or_build_pseudo_labels
from mtpf.release import export_release, load_mtpf_encoder
from mtpf.slots import attach_slots
from mtpf.trainer import MtpfTrainer, newest_complete_checkpoint

logger = logging.getLogger("train_mtpf")
ALL_TASKS = ("ner", "tc")


def build_trainer(model_args: ModelArguments, data_args: DataArguments, args: MtpfTrainingArguments) -> MtpfTrainer:
    """Everything a run needs: model (with slots per mode), per-step data, losses, and the trainer."""
    set_seed(args.seed)  # before any weight is initialised (LoRA A, the pseudo-label head)
    model, tokenizer = load_mtpf_encoder(model_args.backbone, tasks=ALL_TASKS, **model_args.slot_kwargs())
    if model_args.uses_slots:
        model = attach_slots(model, list(ALL_TASKS), train_backbone=model_args.trains_backbone)
    batches: dict[str, Any] = {}
    world = {"rank": args.process_index, "world_size": args.world_size}
    num_clusters = None
    if "ner" in model_args.tasks:
        num_clusters = data_args.num_clusters
        settings = PseudoLabelSettings(
            teacher=data_args.teacher,
            corpus=data_args.ner_corpus,
            num_clusters=data_args.num_clusters,
            max_sentences=data_args.max_ner_sentences,
            max_length=data_args.max_seq_length,
            cache_dir=data_args.pseudo_label_dir,
            seed=args.seed,
        )
        with args.main_process_first(desc="pseudo-labels"):
            corpus = load_or_build_pseudo_labels(settings)
        batches["ner"] = NerBatches(
            corpus, tokenizer, data_args.ner_batch_size, data_args.max_seq_length, args.seed, **world
        )
    if "tc" in model_args.tasks:
        sources = load_pair_sources(data_args.pair_paths())
        logger.info("Text pairs: %s", describe_sources(sources))
        batches["tc"] = TcBatches(
            sources,
            tokenizer,
            data_args.tc_batch_size,
            data_args.max_seq_length,
            args.seed,
            data_args.pair_sampling_temperature,
            **world,
        )
    schedule = TaskSchedule(model_args.tasks, data_args.task_schedule, data_args.task_ratio)
    steps = MultiTaskStepDataset(args.max_steps * args.gradient_accumulation_steps, schedule, batches)
    wrapper = MtpfPretrainingModel(model, num_clusters, model_args.uses_slots, model_args.trains_backbone)
    run_info = {
        "mode": model_args.mode,
        "tasks": list(model_args.tasks),
        "uses_slots": model_args.uses_slots,
        "trains_backbone": model_args.trains_backbone,
        "tpl_layers": model_args.tpl_layers,
        "num_clusters": num_clusters,
        "backbone": model_args.backbone,
        "pcgrad": model_args.pcgrad,
        "task_schedule": data_args.task_schedule,
        "task_ratio": data_args.task_ratio,
        "tc_batch_size": data_args.tc_batch_size,
        "ner_batch_size": data_args.ner_batch_size,
        "pairs": data_args.pairs,
        "ner_corpus": data_args.ner_corpus,
        "teacher": data_args.teacher,
    }
    trainer = MtpfTrainer(
        model=wrapper,
        args=args,
        train_dataset=steps,
        processing_class=tokenizer,
        tc_loss=InfoNCELoss(data_args.temperature),
        tc_mini_batch_size=data_args.tc_mini_batch_size,
        pcgrad=model_args.pcgrad,
        run_info=run_info,
    )
    if data_args.analysis_steps:
        analysis = AnalysisSet.from_conll(data_args.analysis_data, data_args.analysis_sentences, seed=args.seed)
        label = model_args.mode + ("+pcgrad" if model_args.pcgrad else "")
        trainer.add_callback(InterferenceCallback(analysis, tokenizer, data_args.analysis_steps, label))
    return trainer


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
    release_model.config.pretraining = {**trainer.run_info, "steps": trainer.state.global_step}
    output = Path(data_args.release_dir or Path(trainer.args.output_dir) / "release")
    # a run replaces its own earlier release; a folder of anything else is still refused
    return export_release(release_model, trainer.processing_class, output, overwrite=True)


def main(argv: list[str] | None = None) -> Path | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, args = parse_args(argv)
    trainer = build_trainer(model_args, data_args, args)
    resume = resolve_resume(args)
    if resume:
        logger.info("Resuming from checkpoint %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    logger.info("Training done: %s", json.dumps(result.metrics))
    if not trainer.is_world_process_zero():
        return None
    release = export(trainer, data_args)
    print(f"Release written to {release}")
    return release


def cli() -> None:
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
