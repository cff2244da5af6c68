"""Why bf16 autocast speeds a training step up less than the matmul: the step's time split by kind of operator.

    python bench/bf16_breakdown.py [CONFIG.yaml] [--modes pf_tc pf_ner] [--steps 3]

Each mode's step (`training_step` + `optimizer.step()`, as in `mode_step_time.py`) runs under `torch.profiler` in
fp32 and under bf16 autocast, after one warm-up step. Operators are grouped by their own (self) CPU time: matrix
products (`mm`, `addmm`, `bmm`, ...), dtype casts and copies (`_to_copy`, `copy_`: what autocast inserts), and
everything else (layer norm, softmax, GELU, dropout, adds, the optimizer's update); the optimizer step's own time is
reported beside them (its operators are inside those categories too). If the
matmuls sped up by the matmul rate ratio and nothing else changed, the step could reach
`fp32 step / (bf16 non-matmul time + fp32 matmul time / matmul speed-up)`: the bound printed beside the target.
Only on a CPU with native bf16.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict

from common import bench_trainer, optimizer_step, roofline, write_report
from torch.profiler import ProfilerActivity, profile, record_function

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
CAST = {"aten::_to_copy", "aten::copy_", "aten::to", "aten::clone"}


def categorise(events) -> dict[str, float]:
    """Self CPU seconds per category; the optimizer's ops count as `optimizer` wherever they are."""
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        seconds = event.self_cpu_time_total / 1e6
        if event.key == "optimizer":
            continue  # the label's own span: the optimizer's operators are counted under their own names
        totals["total"] += seconds
        if event.key in MATMUL:
            totals["matmul"] += seconds
        elif event.key in CAST:
            totals["cast_copy"] += seconds
        else:
            totals["other"] += seconds
    return dict(totals)


def profile_mode(config: str, mode: str, steps: int, bf16: bool, workdir: str) -> dict:
    trainer = bench_trainer(config, f"{workdir}/{mode}-{bf16}", steps, "--mode", mode, "--bf16", str(bf16).lower())

    def step(index: int) -> None:
        optimizer_step(trainer, trainer.train_dataset[index], record_function("optimizer"))

    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for index in range(1, steps + 1):
            step(index)
    events = profiler.key_averages()
    optimizer_seconds = next((e.cpu_time_total / 1e6 for e in events if e.key == "optimizer"), 0.0)
    totals = categorise(events)
    result = {key: round(value / steps, 4) for key, value in totals.items()}
    result["optimizer_step"] = round(optimizer_seconds / steps, 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--modes", nargs="*", default=["pf_tc", "pf_ner"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output", default="bench/results/bf16_breakdown.json")
    options = parser.parse_args()
    machine = roofline()
    if not machine["cpu"]["native"]:
        raise SystemExit("This CPU has no native bf16: bf16 autocast would be emulated; nothing to break down.")
    matmul_speedup = machine["matmul_gflops"]["bf16"] / machine["matmul_gflops"]["fp32"]
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for mode in options.modes:
            fp32 = profile_mode(options.config, mode, options.steps, False, workdir)
            bf16 = profile_mode(options.config, mode, options.steps, True, workdir)
            non_matmul_bf16 = bf16["total"] - bf16["matmul"]
            bound = fp32["total"] / (non_matmul_bf16 + fp32["matmul"] / matmul_speedup)
            results[mode] = {
                "fp32": fp32,
                "bf16": bf16,
                "speedup": round(fp32["total"] / bf16["total"], 3),
                "matmul_speedup_in_step": round(fp32["matmul"] / bf16["matmul"], 3),
                "bound_if_only_matmuls_sped_up": round(bound, 3),
            }
            print(mode, results[mode], flush=True)
    report = {**machine, "matmul_speedup": round(matmul_speedup, 3), "steps": options.steps, "modes": results}
    write_report(options.output, " ".join(["python", *sys.argv]), report)


if __name__ == "__main__":
    main()
