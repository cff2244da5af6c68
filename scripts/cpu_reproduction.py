"""Issue #7: the paper's comparison at CPU scale, for one base encoder.

Pre-finetunes every mode with identical data, steps and seed (each in a fresh process, skipped when its release
already exists, so a stopped sweep resumes), then evaluates the base encoder and all releases with the `quick`
suite on full and 10 % NER training data (`--eval_workers 2`: `mtpf-eval --workers 2`, two processes with one
core each), and plots the interference curves of pf_ner / pf_tc / mtpf_tpl.

    python scripts/cpu_reproduction.py configs/cpu-reproduction/splade-tiny.yaml \
        --output results/cpu-reproduction/splade-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# label -> overrides; the paper's Table 1-3 rows (PF-L on the last TPL layers and on all layers)
SWEEP = {
    "pf_ner": ["--mode", "pf_ner"],
    "pf_tc": ["--mode", "pf_tc"],
    "mtpf": ["--mode", "mtpf"],
    "mtpf+pcgrad": ["--mode", "mtpf", "--pcgrad", "true"],
    "mtpf_tpl": ["--mode", "mtpf_tpl"],
    "mtpf_tpl+pcgrad": ["--mode", "mtpf_tpl", "--pcgrad", "true"],
    "pf_lora_last": ["--mode", "pf_lora"],
    "pf_lora_all": ["--mode", "pf_lora", "--tpl_layers", "0"],
}
CURVES = ("pf_ner", "pf_tc", "mtpf_tpl")


def run(command: list[str], log: Path) -> dict[str, float]:
    """Run a command with its output appended to `log`; stop the sweep on failure.

    Returns wall seconds and the CPU seconds of the command (the fair cost when other jobs share the cores).
    """
    start, cpu_start = time.monotonic(), _children_cpu_seconds()
    print("+", " ".join(command), flush=True)
    with log.open("a") as stream:
        code = subprocess.call(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {log}")
    return {"seconds": round(time.monotonic() - start, 1), "cpu_seconds": round(_children_cpu_seconds() - cpu_start, 1)}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--output", required=True, help="Results folder (results.json/md, runs.json, curves).")
    parser.add_argument("--labels", nargs="+", default=list(SWEEP), help=f"Subset of {list(SWEEP)}.")
    parser.add_argument("--analysis_steps", type=int, default=100, help="Curve points every N steps.")
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--fractions", nargs="+", default=["1.0", "0.1"])
    parser.add_argument("--train_only", action="store_true", help="Pre-finetune (and copy curves); evaluate later.")
    parser.add_argument(
        "--eval_workers", type=int, default=1, help="mtpf-eval --workers N: N processes, one share of the cores each."
    )
    options = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    config = yaml.safe_load(Path(options.config).read_text())
    work = Path(config["output_dir"])
    output = Path(options.output)
    (output / "logs").mkdir(parents=True, exist_ok=True)
    runs_path = output / "runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.is_file() else {}
    releases = []
    for label in options.labels:
        release = work / f"{label}-release"
        releases.append(f"{label}={release}")
        if (release / "backbone" / "model.safetensors").is_file() and label in runs:
            continue
        command = [
            sys.executable,
            "train_mtpf.py",
            options.config,
            *SWEEP[label],
            "--output_dir",
            str(work / label),
            "--release_dir",
            str(release),
            "--save_strategy",
            "no",
        ]
        if label in CURVES:
            command += ["--analysis_steps", str(options.analysis_steps)]
        cost = run(command, output / "logs" / f"train-{label}.log")
        runs[label] = {
            "command": " ".join(command[1:]),
            "train_seconds": cost["seconds"],
            "train_cpu_seconds": cost["cpu_seconds"],
        }
        if label in CURVES:
            shutil.copy(work / label / "interference.json", output / f"curves-{label}.json")
        runs_path.write_text(json.dumps(runs, indent=2) + "\n")
    curves = [str(output / f"curves-{label}.json") for label in CURVES if (output / f"curves-{label}.json").is_file()]
    if curves:
        run(
            [sys.executable, "-m", "mtpf", "analyze", "--output", str(output), "--curves", *curves],
            output / "logs" / "analyze.log",
        )
    if options.train_only:
        print(f"done: releases under {work}, curves in {output}")
        return
    models = [f"base={config['backbone']}", *releases]
    evaluation = [
        "mtpf-eval",
        "--suite",
        options.suite,
        "--fractions",
        *options.fractions,
        "--workers",
        str(options.eval_workers),
        "--output",
        str(output),
        "--model",
        *models,
    ]
    cost = run(evaluation, output / "logs" / "eval.log")
    runs["evaluation"] = {"command": " ".join(evaluation), "workers": options.eval_workers, **cost}
    runs_path.write_text(json.dumps(runs, indent=2) + "\n")
    print(f"done: {output}/results.md")


if __name__ == "__main__":
    main()
