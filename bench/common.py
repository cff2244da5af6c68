"""Shared helpers of the benchmark scripts: timing, peak memory, machine description, JSON output, trainer steps."""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def best_of(function: Callable[[], object], repeats: int = 5, warmup: int = 3) -> float:
    """Median seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 3) -> dict:
    """Median seconds of each function, timed in turn round after round: a drift of the machine's speed (large
    here) hits every function alike instead of whichever happened to run during it."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine() -> dict:
    import peft
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def write_report(path: str | Path, command: str, results: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "machine": machine(), "results": results}
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def roofline() -> dict:
    """fp32 (and, on a CPU with native bf16, bf16) matmul GFLOP/s, with the CPU's bf16 capability."""
    from mtpf.training.precision import cpu_bf16_capability, matmul_gflops

    capability = cpu_bf16_capability()
    rates = {"fp32": round(matmul_gflops(torch.float32), 1)}
    rates["bf16"] = round(matmul_gflops(torch.bfloat16), 1) if capability["native"] else None
    return {"cpu": {"capability": torch.backends.cpu.get_cpu_capability(), **capability}, "matmul_gflops": rates}


def encoder_forward_flops(config, rows: int, length: int) -> float:
    """FLOPs of one encoder forward on a padded [rows, length] batch: every linear (2 per multiply-add) plus the
    attention scores and their weighted sum. A training step's forward + backward is about 3x this."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = rows * length
    linear = 2 * tokens * layers * (4 * hidden * hidden + 2 * hidden * inner)
    attention = 2 * 2 * rows * layers * length * length * hidden
    return float(linear + attention)


def masks_of(inputs) -> list[torch.Tensor]:
    """Every `attention_mask` in a (nested) batch: one per encoder pass of a training step."""
    if isinstance(inputs, dict):
        found = [inputs["attention_mask"]] if "attention_mask" in inputs else []
        return found + [m for key, value in inputs.items() if key != "attention_mask" for m in masks_of(value)]
    if isinstance(inputs, list | tuple):
        return [m for value in inputs for m in masks_of(value)]
    return []


def chunk_masks(mask: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The attention masks a batch runs as when embedded in length-sorted chunks of `size` (`--tc_length_chunk`)."""
    from mtpf.data.padding import length_sorted_chunks

    chunks, _ = length_sorted_chunks({"attention_mask": mask}, size)
    return [chunk["attention_mask"] for chunk in chunks]


def bench_trainer(config: str, output_dir: str | Path, steps: int, *flags: str):
    """The pre-finetuning trainer of `config` + `flags`, as training builds it, for one warm-up and `steps` timed
    steps (no reports, no checkpoints), its optimizer created."""
    from mtpf.training import build_trainer
    from mtpf.training.args import parse_args

    argv = [
        config,
        *flags,
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(steps + 1),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    trainer = build_trainer(*parse_args(argv))
    trainer.create_optimizer_and_scheduler(steps + 1)
    return trainer


def optimizer_step(trainer, inputs: dict, optimizer_scope: contextlib.AbstractContextManager | None = None) -> None:
    """One optimizer step as `Trainer.train()` runs it: `training_step` under accelerate's autocast (which `train()`
    gets from `accelerator.prepare` and a direct call would bypass), `optimizer.step()`, gradients cleared."""
    with trainer.accelerator.autocast():
        trainer.training_step(trainer.model, inputs)
    with optimizer_scope or contextlib.nullcontext():
        trainer.optimizer.step()
    trainer.model.zero_grad(set_to_none=True)
