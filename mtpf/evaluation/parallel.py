"""`mtpf-eval --workers N`: one suite evaluated by N processes, each on its share of the cores.

A model is not the unit of work: the MiniLM-class NER runs of one model take ~45 minutes on one core, so three models
on two workers would leave one idle for half the time. The work is cut into one job per (model, NER dataset) and one
TC job per model, only for what the output folder lacks, and dealt longest-first to the least-loaded worker. Each
worker runs its jobs as ordinary `mtpf eval` processes into its own folder (seeded with the output's scores), and
the folders are merged back with the same checks as `python -m mtpf merge`; a stopped run keeps them and resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from mtpf.evaluation.candidate import candidate_hash, split_label
from mtpf.evaluation.suite import SuiteRun, SuiteSettings, merge_results
from mtpf.evaluation.tc import DEFAULT_TC_ROOT, TC_TASKS, is_local_available

logger = logging.getLogger(__name__)

WORKERS_DIR = "workers"  # inside the output folder: worker-i/ (removed once merged) and worker-i.log (kept)
TC_TASK_COST = 0.3  # one MTEB task against one NER training run, from the quick suite's timings on MiniLM-L6


@dataclass(frozen=True)
class EvalJob:
    model: str  # LABEL=PATH or PATH, as given to mtpf-eval
    ner_dataset: str | None  # None: the model's TC tasks
    cost: float  # relative: NER training runs still to do (TC tasks count TC_TASK_COST each)

    def arguments(self) -> list[str]:
        family = ["--skip_tc", "--ner_datasets", self.ner_dataset] if self.ner_dataset else ["--skip_ner"]
        return ["--model", self.model, *family]

    def describe(self) -> str:
        return f"{split_label(self.model)[0]}: " + (f"NER {self.ner_dataset}" if self.ner_dataset else "TC")


def pending_jobs(
    models: list[str],
    hashes: dict[str, str],
    settings: SuiteSettings,
    has: Callable[..., bool],
    ner: bool = True,
    tc: bool = True,
) -> list[EvalJob]:
    """The jobs with scores still to make; `hashes` maps each label to the config hash of its current weights and
    `has(label, config_hash, family, dataset, fraction, seed)` says whether a score is there (`SuiteRun.has`)."""
    jobs = []
    for spec in models:
        label = split_label(spec)[0]
        config_hash = hashes[label]
        if ner:
            for dataset in settings.ner_datasets:
                name = dataset.partition("=")[0]  # a user's NAME=DIR is recorded as NAME
                runs = [(f, s) for f in settings.fractions for s in settings.seeds]
                todo = sum(not has(label, config_hash, "ner", name, f, s) for f, s in runs)
                if todo:
                    jobs.append(EvalJob(spec, dataset, float(todo)))
        if tc:
            names = [TC_TASKS[column].mteb_name for column in settings.tc_tasks]
            todo = sum(not has(label, config_hash, "tc", name, 1.0, 0) for name in names)  # TC: full data, seed 0
            if todo:
                jobs.append(EvalJob(spec, None, todo * TC_TASK_COST))
    return jobs


def deal(jobs: list[EvalJob], workers: int) -> list[list[EvalJob]]:
    """Longest job first to the least-loaded worker; each worker then runs its jobs in the order they were given."""
    shares: list[list[EvalJob]] = [[] for _ in range(workers)]
    for job in sorted(jobs, key=lambda j: -j.cost):
        min(shares, key=lambda share: sum(j.cost for j in share)).append(job)
    order = {job: position for position, job in enumerate(jobs)}
    return [sorted(share, key=order.__getitem__) for share in shares if share]


def evaluate_in_parallel(
    base_arguments: list[str],
    models: list[str],
    settings: SuiteSettings,
    output: str | os.PathLike,
    workers: int,
    command: str,
    ner: bool = True,
    tc: bool = True,
    tc_root: str | os.PathLike = DEFAULT_TC_ROOT,
    hub_reachable: bool = False,
) -> Path:
    """Run the pending jobs in `workers` processes and merge their folders into `output`.

    `base_arguments` are the mtpf-eval arguments every job shares (suite, overrides, data roots); `command` is
    recorded in results.json in place of the per-job commands. TC tasks that cannot run here (no local copy, Hub
    offline) are not planned as work; a job still lists them as not evaluated.
    """
    output = Path(output)
    results = output / "results.json"
    previous = SuiteRun(settings, output)  # refuses an output of another suite or protocol, before any work
    hashes = {label: candidate_hash(path) for label, path in map(split_label, models)}
    for record in previous.records:
        if hashes.get(record.model, record.config_hash) != record.config_hash:
            raise ValueError(
                f"{results}: holds scores of {record.model!r} from other weights (config hash {record.config_hash}, "
                f"now {hashes[record.model]}); give the new weights another label or use another --output."
            )
    runnable = [c for c in settings.tc_tasks if hub_reachable or is_local_available(TC_TASKS[c], tc_root)]
    shares = deal(pending_jobs(models, hashes, replace(settings, tc_tasks=runnable), previous.has, ner, tc), workers)
    if not shares:
        logger.info("%s: every score is already there", results)
        return results
    parts = output / WORKERS_DIR
    folders = [parts / f"worker-{i}" for i in range(len(shares))]
    if results.is_file():
        for folder in folders:
            merge_results(folder, [output], command=command)
    threads = max(1, len(os.sched_getaffinity(0)) // len(shares))
    for i, share in enumerate(shares):
        logger.info("worker %d (%d threads): %s", i, threads, "; ".join(job.describe() for job in share))
    with ThreadPoolExecutor(len(shares)) as pool:
        failures = [
            failure
            for failure in pool.map(
                lambda i: _run_share(i, shares[i], base_arguments, folders[i], threads), range(len(shares))
            )
            if failure
        ]
    if failures:
        raise SystemExit(f"mtpf-eval --workers: {'; '.join(failures)}. Rerun the same command to resume.")
    order = [split_label(spec)[0] for spec in models]
    path = merge_results(output, folders, command, order, keep_commands=False)
    for folder in folders:
        shutil.rmtree(folder)
    return path


def _run_share(index: int, share: list[EvalJob], base_arguments: list[str], folder: Path, threads: int) -> str:
    """Run one worker's jobs in turn; returns an error message, or '' when all succeeded."""
    log_path = folder.parent / f"worker-{index}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log_path.open("a", encoding="utf-8") as log:
        for number, job in enumerate(share, 1):
            arguments = [sys.executable, "-m", "mtpf", "eval", *base_arguments, "--output", str(folder)]
            start = time.monotonic()
            log.write(f"+ {' '.join([*arguments, *job.arguments()])}\n")
            log.flush()
            process = subprocess.run([*arguments, *job.arguments()], stdout=log, stderr=subprocess.STDOUT,
                                     env=environment, check=False)  # fmt: skip
            if process.returncode != 0:
                return f"worker {index} failed on {job.describe()} (exit {process.returncode}, log {log_path})"
            logger.info("worker %d: job %d/%d (%s) done in %.0f s", index, number, len(share), job.describe(),
                        time.monotonic() - start)  # fmt: skip
    return ""
