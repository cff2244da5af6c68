"""Seconds per optimizer step of every pre-finetuning mode, side by side on the same batches.

    python bench/mode_step_time.py [CONFIG.yaml] [--steps 4] [--output bench/results/mode_step_time.json]

Each mode builds its trainer from the same config (same data, seeds and batch sizes), runs one warm-up step,
then times `--steps` calls of `training_step` + `optimizer.step()`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from mtpf.training import build_trainer
from mtpf.training.args import parse_args

MODES = [
    ("pf_ner", False),
    ("pf_tc", False),
    ("mtpf", False),
    ("mtpf", True),
    ("mtpf_tpl", False),
    ("mtpf_tpl", True),
    ("pf_lora", False),
]


def time_mode(config: str, mode: str, pcgrad: bool, steps: int, workdir: Path) -> float:
    argv = [
        config,
        "--mode",
        mode,
        "--pcgrad",
        str(pcgrad).lower(),
        "--output_dir",
        str(workdir / f"{mode}-{pcgrad}"),
        "--max_steps",
        str(steps + 1),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    trainer = build_trainer(*parse_args(argv))
    trainer.create_optimizer_and_scheduler(steps + 1)
    model = trainer.model
    durations = []
    for step in range(steps + 1):
        inputs = trainer.train_dataset[step]
        start = time.perf_counter()
        trainer.training_step(model, inputs)
        trainer.optimizer.step()
        model.zero_grad(set_to_none=True)
        durations.append(time.perf_counter() - start)
    return sum(durations[1:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", default="bench/results/mode_step_time.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for mode, pcgrad in MODES:
            seconds = time_mode(args.config, mode, pcgrad, args.steps, Path(workdir))
            results.append({"mode": mode, "pcgrad": pcgrad, "seconds_per_step": round(seconds, 3)})
            print(f"{mode:9s} pcgrad={pcgrad!s:5s} {seconds:7.2f} s/step", flush=True)
    seconds = {(r["mode"], r["pcgrad"]): r["seconds_per_step"] for r in results}
    overhead = seconds[("mtpf_tpl", False)] / (seconds[("pf_ner", False)] + seconds[("pf_tc", False)])
    print(f"mtpf_tpl step / (pf_ner step + pf_tc step) = {overhead:.3f} (target <= 1.05)")
    report = {
        "config": args.config,
        "steps_timed": args.steps,
        "results": results,
        "tpl_step_overhead": round(overhead, 3),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
