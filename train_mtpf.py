"""Pre-finetune an encoder (MTPF-TPL or a baseline) and export a Hub-ready release folder.

    python train_mtpf.py configs/demo.yaml [--key value ...]
    torchrun --nproc_per_node 2 train_mtpf.py configs/demo.yaml      # data parallel (gloo on CPU, NCCL on GPU)

Modes: pf_ner, pf_tc (individual), mtpf (naive, no slots), mtpf_tpl (task-primary LoRAs), pf_lora (frozen
backbone). `--resume_from_checkpoint last` continues from the newest complete checkpoint in output_dir.
The run is built in `mtpf/training/`; the tasks live in `mtpf/tasks/`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from mtpf.training import build_trainer, export, parse_args, resolve_resume

logger = logging.getLogger("train_mtpf")


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
    from mtpf.cli import run_reporting_user_errors

    run_reporting_user_errors("train_mtpf", main, sys.argv[1:])


if __name__ == "__main__":
    cli()
