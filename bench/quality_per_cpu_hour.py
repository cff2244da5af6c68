"""Benchmark 5: pre-finetuning quality per CPU-hour.

`pf_tc` and `mtpf_tpl` each pre-finetune the demo model for the same CPU-time budget (CPU seconds of the training
process, all threads: fair even when other work shares the machine; constant learning rate after a short warm-up,
so the schedule does not depend on how many steps fit), then the evaluation suite's
`quick` text-classification part scores the base model and both releases. Reports the average accuracy, the gain
over the base model, and that gain per CPU-hour of pre-finetuning.

    python bench/quality_per_cpu_hour.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from common import write_report
from transformers import TrainerCallback

from mtpf.evaluation.suite import SuiteRun
from mtpf.evaluation.suites import suite_settings
from mtpf.evaluation.tables import family_averages
from mtpf.results import ResultRecord
from mtpf.training import build_trainer, export
from mtpf.training.args import parse_args

MODES = ("pf_tc", "mtpf_tpl")


class CpuTimeBudget(TrainerCallback):
    """Stop training once the process has used `seconds` of CPU time (all threads) since the first step began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = self.start if self.start is not None else time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if time.process_time() - self.start >= self.seconds:
            control.should_training_stop = True


def pretrain(config: str, mode: str, minutes: float, workdir: Path) -> dict:
    overrides = [
        "--mode",
        mode,
        "--output_dir",
        str(workdir / mode),
        "--release_dir",
        str(workdir / f"{mode}-release"),
        "--max_steps",
        "100000",  # an upper bound; the time budget ends the run
        "--lr_scheduler_type",
        "constant_with_warmup",
        "--warmup_steps",
        "10",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--analysis_steps",
        "0",
    ]
    model_args, data_args, args = parse_args([config, *overrides])
    trainer = build_trainer(model_args, data_args, args)
    trainer.add_callback(CpuTimeBudget(minutes * 60))
    wall, cpu = time.monotonic(), time.process_time()
    trainer.train()
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    release = export(trainer, data_args)
    return {
        "mode": mode,
        "release": str(release),
        "steps": trainer.state.global_step,
        "cpu_seconds": round(cpu),
        "wall_seconds": round(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU-time budget of pre-finetuning per mode.")
    parser.add_argument("--workdir", default="outputs/bench-quality")
    parser.add_argument("--output", default="bench/results/quality_per_cpu_hour.json")
    parser.add_argument("--suite", default="quick", help="Evaluation suite whose TC part scores the models.")
    parser.add_argument("--n_experiments", type=int, default=None, help="Override the suite's probe count.")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mteb").setLevel(logging.WARNING)
    workdir = Path(options.workdir)
    runs = [pretrain(options.config, mode, options.minutes, workdir) for mode in MODES]
    base = parse_args([options.config])[0].backbone
    settings = suite_settings(options.suite, tc={"n_experiments": options.n_experiments})
    suite = SuiteRun(settings, workdir / "eval", command=" ".join(sys.argv))
    suite.run([base, *(run["release"] for run in runs)], ner=False)
    payload = json.loads((workdir / "eval" / "results.json").read_text())
    averages = family_averages([ResultRecord(**r) for r in payload["results"]], "tc")
    for run in runs:
        gain = averages[run["release"]] - averages[base]
        hours = run["cpu_seconds"] / 3600
        run.update(
            tc_average=round(averages[run["release"]], 2), gain=round(gain, 2), gain_per_cpu_hour=round(gain / hours, 2)
        )
    results = {
        "budget_minutes": options.minutes,
        "base": base,
        "base_tc_average": round(averages[base], 2),
        "tasks": sorted({r["dataset_name"] for r in payload["results"]}),
        "runs": runs,
        "missing": sorted({m["dataset"] for m in payload["missing"]}),
    }
    print(f"{'model':<10} {'steps':>6} {'CPU s':>6} {'wall s':>7} {'TC avg':>7} {'gain':>6} {'gain/CPU-h':>11}")
    print(f"{'base':<10} {'-':>6} {'-':>6} {'-':>7} {averages[base]:7.2f}")
    for run in runs:
        print(
            f"{run['mode']:<10} {run['steps']:6d} {run['cpu_seconds']:6d} {run['wall_seconds']:7d} "
            f"{run['tc_average']:7.2f} {run['gain']:+6.2f} {run['gain_per_cpu_hour']:+11.2f}"
        )
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
