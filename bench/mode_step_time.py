"""Seconds per optimizer step of every pre-finetuning mode, side by side on the same batches, and how close each
step comes to the CPU's matmul rate.

    python bench/mode_step_time.py [CONFIG.yaml] [--steps 6] [--repeats 3] [--bf16] [--modes pf_tc ...]
                                   [--output bench/results/mode_step_time.json]

Each repeat builds one trainer per variant from the same config (same data, seeds and batch sizes), runs one
warm-up step on each, then times `--steps` rounds in which every variant runs its step `training_step` +
`optimizer.step()` in turn: the variants are interleaved step by step, so a drift of the machine's speed hits them
alike. Reported: the median over repeats of each variant's mean seconds per step, and each ratio computed within a
repeat. Next to seconds per step: real (unpadded) tokens/s and achieved GFLOP/s (3x the encoder's forward FLOPs on
the shapes actually run: forward + backward of a full fine-tune; PF-L's frozen backbone does less, so its figure is an
upper bound) against `torch.matmul`'s rate measured in the same process. `--bf16` runs every variant under bf16
autocast (only on a CPU with native bf16; see `mtpf/training/precision.py`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from common import bench_trainer, chunk_masks, encoder_forward_flops, masks_of, optimizer_step, roofline

TC_CHUNK = 16  # texts per length-sorted TC chunk in the `+ length chunks` variants


@dataclass(frozen=True)
class Variant:
    mode: str
    pcgrad: bool = False
    flags: tuple[str, ...] = ()
    note: str = ""
    tc_length_chunk: int = 0

    @property
    def label(self) -> str:
        return self.mode + (" + pcgrad" if self.pcgrad else "") + (f" ({self.note})" if self.note else "")

    def argv(self) -> list[str]:
        chunking = ["--tc_length_chunk", str(self.tc_length_chunk)] if self.tc_length_chunk else []
        return ["--mode", self.mode, "--pcgrad", str(self.pcgrad).lower(), *self.flags, *chunking]


VARIANTS = [
    Variant("pf_ner"),
    Variant("pf_tc"),
    Variant("mtpf"),
    Variant("mtpf", pcgrad=True),
    Variant("mtpf_tpl"),
    Variant("mtpf_tpl", flags=("--fused_lora", "false"), note="PEFT LoRA, unfused"),
    Variant("mtpf_tpl", pcgrad=True),
    Variant("pf_lora"),
    Variant("pf_tc", note=f"length chunks {TC_CHUNK}", tc_length_chunk=TC_CHUNK),
    Variant("mtpf_tpl", note=f"length chunks {TC_CHUNK}", tc_length_chunk=TC_CHUNK),
]


@dataclass
class Timing:
    """One variant's trainer and what its timed steps added up to."""

    trainer: object
    real_tokens: int = 0
    flops: float = 0.0
    steps: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        seconds = sum(self.steps)
        return {
            "seconds_per_step": seconds / len(self.steps),
            "real_tokens_per_s": self.real_tokens / seconds,
            "gflops_per_s": self.flops / seconds / 1e9,
        }


def build(config: str, variant: Variant, steps: int, workdir: Path, bf16: bool) -> Timing:
    output = workdir / variant.label.replace(" ", "_")
    return Timing(bench_trainer(config, output, steps, *variant.argv(), "--bf16", str(bf16).lower()))


def run_step(timing: Timing, step: int, variant: Variant) -> None:
    """One optimizer step, timed; tokens and FLOPs counted on the shapes the encoder actually ran."""
    trainer = timing.trainer
    inputs = trainer.train_dataset[step]
    start = time.perf_counter()
    optimizer_step(trainer, inputs)
    duration = time.perf_counter() - start
    if step == 0:
        return  # warm-up
    timing.steps.append(duration)
    backbone_config = trainer.model.encoder.config.backbone_config
    for mask in executed_masks(inputs, variant.tc_length_chunk):
        timing.real_tokens += int(mask.sum())
        timing.flops += 3 * encoder_forward_flops(backbone_config, *mask.shape)


def executed_masks(inputs: dict, tc_length_chunk: int) -> list[torch.Tensor]:
    """The attention masks of every encoder pass of a step (a chunked TC batch runs as its chunks)."""
    masks = []
    for task, batch in inputs.items():
        chunked = task == "tc" and tc_length_chunk
        masks += chunk_masks(batch["attention_mask"], tc_length_chunk) if chunked else masks_of(batch)
    return masks


def time_repeat(config: str, variants: list[Variant], steps: int, workdir: Path, bf16: bool) -> dict[str, dict]:
    """Every variant built fresh, one warm-up step each, then `steps` interleaved rounds."""
    timings = {v.label: build(config, v, steps, workdir, bf16) for v in variants}
    for step in range(steps + 1):
        for variant in variants:
            run_step(timings[variant.label], step, variant)
    return {label: timing.summary() for label, timing in timings.items()}


RATIOS = {  # name: (numerator, denominators summed)
    "tpl_step_overhead": ("mtpf_tpl", ("pf_ner", "pf_tc")),
    "tpl_step_overhead_unfused": ("mtpf_tpl (PEFT LoRA, unfused)", ("pf_ner", "pf_tc")),
    "fused_vs_unfused_tpl_step": ("mtpf_tpl", ("mtpf_tpl (PEFT LoRA, unfused)",)),
    "tc_length_chunks_vs_plain_step": (f"pf_tc (length chunks {TC_CHUNK})", ("pf_tc",)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="Timings per variant; the median is reported.")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (native-bf16 CPUs only).")
    parser.add_argument("--modes", nargs="*", default=None, help="Only the variants of these modes (default: all).")
    parser.add_argument("--output", default="bench/results/mode_step_time.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    machine = roofline()
    variants = [v for v in VARIANTS if args.modes is None or v.mode in args.modes]
    repeats = []
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            repeats.append(time_repeat(args.config, variants, args.steps, Path(workdir), args.bf16))
            for label, summary in repeats[-1].items():
                print(f"repeat {repeat}: {label:40s} {summary}", flush=True)
    fp32_rate = machine["matmul_gflops"]["fp32"]
    results = []
    for variant in variants:
        timings = [r[variant.label] for r in repeats]
        median = {key: statistics.median(t[key] for t in timings) for key in timings[0]}
        results.append(
            {
                "variant": variant.label,
                "mode": variant.mode,
                "pcgrad": variant.pcgrad,
                "flags": variant.argv()[4:],
                "seconds_per_step": round(median["seconds_per_step"], 3),
                "all_seconds_per_step": [round(t["seconds_per_step"], 3) for t in timings],
                "real_tokens_per_s": round(median["real_tokens_per_s"]),
                "gflops_per_s": round(median["gflops_per_s"], 1),
                "share_of_fp32_matmul": round(median["gflops_per_s"] / fp32_rate, 3),
            }
        )
        print(
            f"{variant.label:40s} {median['seconds_per_step']:7.3f} s/step "
            f"{median['real_tokens_per_s']:8.0f} tok/s {median['gflops_per_s']:6.1f} GFLOP/s"
        )
    report = {
        "config": args.config,
        "steps_timed": args.steps,
        "repeats": args.repeats,
        "bf16": args.bf16,
        "interleaved": True,
        "results": results,
        **machine,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    for name, (numerator, denominators) in RATIOS.items():
        if all(label in repeats[0] for label in (numerator, *denominators)):
            ratios = [
                r[numerator]["seconds_per_step"] / sum(r[d]["seconds_per_step"] for d in denominators) for r in repeats
            ]
            report[name] = round(statistics.median(ratios), 3)
            report[f"{name}_per_repeat"] = [round(x, 3) for x in ratios]
            print(f"{name}: {numerator} / {' + '.join(denominators)} = {report[name]} {report[f'{name}_per_repeat']}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
