"""Seconds per optimizer step of every pre-finetuning mode, side by side on the same batches, and how close each
step comes to the CPU's matmul rate.

    python bench/mode_step_time.py [CONFIG.yaml] [--steps 4] [--repeats 3] [--bf16] [--modes pf_tc ...]
                                   [--output bench/results/mode_step_time.json]

Each mode builds its trainer from the same config (same data, seeds and batch sizes), runs one warm-up step,
then times `--steps` calls of `training_step` + `optimizer.step()`; `--repeats` rebuilds and times again, and the
median is reported. Next to seconds per step: real (unpadded) tokens/s and achieved GFLOP/s (3x the encoder's
forward FLOPs on the padded batches: forward + backward of a full fine-tune; PF-L's frozen backbone does less, so its
figure is an upper bound) against `torch.matmul`'s rate measured in the same process. `--bf16` runs every mode
under bf16 autocast (only on a CPU with native bf16; see `mtpf/training/precision.py`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import encoder_forward_flops, masks_of, roofline

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


def time_mode(config: str, mode: str, pcgrad: bool, steps: int, workdir: Path, bf16: bool) -> dict:
    """Mean seconds per step over `steps` timed steps (after one warm-up), real tokens/s and GFLOP/s."""
    output = str(workdir / f"{mode}-{pcgrad}")
    argv = [config, "--mode", mode, "--pcgrad", str(pcgrad).lower(), "--output_dir", output, "--max_steps",
            str(steps + 1), "--report_to", "none", "--save_strategy", "no", "--bf16", str(bf16).lower()]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    trainer.create_optimizer_and_scheduler(steps + 1)
    model = trainer.model
    backbone_config = model.encoder.config.backbone_config if hasattr(model, "encoder") else None
    durations, real, flops = [], 0, 0.0
    for step in range(steps + 1):
        inputs = trainer.train_dataset[step]
        start = time.perf_counter()
        with trainer.accelerator.autocast():  # what `train()` gets from `accelerator.prepare`; bypassed here
            trainer.training_step(model, inputs)
        trainer.optimizer.step()
        model.zero_grad(set_to_none=True)
        durations.append(time.perf_counter() - start)
        if step > 0:
            for mask in masks_of(inputs):
                real += int(mask.sum())
                if backbone_config is not None:
                    flops += 3 * encoder_forward_flops(backbone_config, *mask.shape)
    seconds = sum(durations[1:])
    return {"seconds_per_step": seconds / steps, "real_tokens_per_s": real / seconds,
            "gflops_per_s": flops / seconds / 1e9}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="Timings per mode; the median is reported.")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (native-bf16 CPUs only).")
    parser.add_argument("--modes", nargs="*", default=None, help="Only these modes (default: all).")
    parser.add_argument("--output", default="bench/results/mode_step_time.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    machine = roofline()
    modes = [(m, p) for m, p in MODES if args.modes is None or m in args.modes]
    runs: dict[tuple[str, bool], list[dict]] = {key: [] for key in modes}
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for mode, pcgrad in modes:
                runs[(mode, pcgrad)].append(time_mode(args.config, mode, pcgrad, args.steps, Path(workdir), args.bf16))
                print(f"repeat {repeat}: {mode:9s} pcgrad={pcgrad!s:5s} {runs[(mode, pcgrad)][-1]}", flush=True)
    fp32_rate = machine["matmul_gflops"]["fp32"]
    results = []
    for (mode, pcgrad), timings in runs.items():
        median = {key: statistics.median(t[key] for t in timings) for key in timings[0]}
        results.append({"mode": mode, "pcgrad": pcgrad, "seconds_per_step": round(median["seconds_per_step"], 3),
                        "all_seconds_per_step": [round(t["seconds_per_step"], 3) for t in timings],
                        "real_tokens_per_s": round(median["real_tokens_per_s"]),
                        "gflops_per_s": round(median["gflops_per_s"], 1),
                        "share_of_fp32_matmul": round(median["gflops_per_s"] / fp32_rate, 3)})  # fmt: skip
        print(f"{mode:9s} pcgrad={pcgrad!s:5s} {median['seconds_per_step']:7.2f} s/step "
              f"{median['real_tokens_per_s']:8.0f} tok/s {median['gflops_per_s']:6.1f} GFLOP/s")  # fmt: skip
    report = {"config": args.config, "steps_timed": args.steps, "repeats": args.repeats, "bf16": args.bf16,
              "results": results, **machine,
              "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}  # fmt: skip
    if all((m, False) in runs for m in ("pf_ner", "pf_tc", "mtpf_tpl")):
        triples = zip(runs[("mtpf_tpl", False)], runs[("pf_ner", False)], runs[("pf_tc", False)])
        ratios = [t["seconds_per_step"] / (n["seconds_per_step"] + c["seconds_per_step"]) for t, n, c in triples]
        report["tpl_step_overhead"] = round(statistics.median(ratios), 3)
        report["tpl_step_overhead_per_repeat"] = [round(r, 3) for r in ratios]
        print(f"mtpf_tpl step / (pf_ner step + pf_tc step) = {report['tpl_step_overhead']} (target <= 1.05)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
