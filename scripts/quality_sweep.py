"""The quality sweep (code in mtpf/quality/): screen every recipe at every pre-finetuning seed, then summarise.

    python scripts/quality_sweep.py --recipes configs/quality/recipes.yaml --root outputs/quality --seeds 0 1 2
    python scripts/quality_sweep.py --recipes configs/quality/recipes.yaml --root outputs/quality --seeds 0 1 2 \
        --protocol quick --only demo NAME     # confirm the candidates on the quick protocol
    python scripts/quality_sweep.py --recipes configs/quality/recipes.yaml --root outputs/quality \
        --summarize results/quality --shipped NAME
    python scripts/quality_sweep.py --root outputs/quality --protocol quick --rescore   # after the scores gain a field

Every (recipe, seed, protocol) is one job under --root with its own completion marker; rerunning the same command
after a kill resumes where it stopped. Extra `--key value` pairs after `--` go to every training run (e.g. the
teacher's folder).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from mtpf.quality.recipes import load_recipes
from mtpf.quality.sweep import (
    MARKERS,
    Sweep,
    copy_job_records,
    rescore_jobs,
    run_sweep,
    summarize_all,
    write_summary,
)


@dataclass
class SweepArguments:
    recipes: str = field(default="configs/quality/recipes.yaml", metadata={"help": "The recipe file."})
    root: str = field(default="outputs/quality", metadata={"help": "One folder per (recipe, seed) job."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Pre-finetuning seeds."})
    protocol: str = field(
        default="screen",
        metadata={"help": "screen (every recipe) or quick (the confirmation of candidates).", "choices": list(MARKERS)},
    )
    only: list[str] | None = field(default=None, metadata={"help": "Run only these recipes (default: all)."})
    summarize: str | None = field(
        default=None, metadata={"help": "Instead of running: write summary.json and RESULTS.md into this folder."}
    )
    shipped: str | None = field(default=None, metadata={"help": "With --summarize: the recipe the demo ships."})
    rescore: bool = field(
        default=False,
        metadata={
            "help": "Instead of running: recompute the --protocol's finished jobs' scores from their folders' "
            "results (after the scores gain a field, e.g. the dev F1), then stop."
        },
    )


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    (args,) = HfArgumentParser(SweepArguments).parse_args_into_dataclasses(args=own)
    book = load_recipes(args.recipes)
    if args.summarize:
        summary = summarize_all(book, Path(args.root), args.shipped)
        write_summary(summary, Path(args.summarize), " ".join(["python scripts/quality_sweep.py", *argv]))
        records = copy_job_records(Path(args.root), Path(args.summarize))
        print(f"Summary written to {args.summarize}/summary.json and RESULTS.md, {len(records)} job records to jobs/")
        return
    if args.rescore:
        rescored = rescore_jobs(Path(args.root), args.protocol)
        print(f"Rescored {len(rescored)} {args.protocol} jobs from their folders' results: {' '.join(rescored)}")
        return
    run_sweep(Sweep(book, Path(args.root), args.protocol, tuple(overrides)), args.seeds, args.only)


if __name__ == "__main__":
    main(sys.argv[1:])
