"""`mtpf-eval --workers N`: one suite evaluated by N processes, each on its share of the cores.

A model is not the unit of work: the MiniLM-class NER runs of one model take ~45 minutes on one core, so three models
on two workers would leave one idle for half the time. The work is cut into one job per (model, NER dataset) and one
TC job per model, only for what the output folder lacks, and dealt longest-first to the least-loaded worker. Each
worker is a process (`python -m mtpf.evaluation.parallel JOBS.json`) that gets its jobs as data — the suite's
settings, its folder (seeded with the output's scores), the jobs — and runs them with `SuiteRun`; the folders are
merged back with the same checks as `python -m mtpf merge`; a stopped run keeps them and resumes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mtpf.apps.ner.data import ner_dataset_name
from mtpf.data.roots import DataSources
from mtpf.evaluation.store import ResultsStore, ScoreKey, merge_results
from mtpf.evaluation.suite import SuiteRun
from mtpf.evaluation.suites import SuiteSettings, settings_from_dict
from mtpf.evaluation.tc import TC_TASKS, is_local_available
from mtpf.io import atomic_write_text
from mtpf.models import model_hash, split_label

logger = logging.getLogger(__name__)

WORKERS_DIR = "workers"  # inside the output folder: worker-i/ (removed once merged) and worker-i.log (kept)
TC_TASK_COST = 0.3  # one MTEB task against one NER training run, from the quick suite's timings on MiniLM-L6


@dataclass(frozen=True)
class EvalJob:
    model: str  # LABEL=PATH or PATH, as given to mtpf-eval
    ner_dataset: str | None  # None: the model's TC tasks
    cost: float  # relative: NER training runs still to do (TC tasks count TC_TASK_COST each)

    def describe(self) -> str:
        return f"{split_label(self.model)[0]}: " + (f"NER {self.ner_dataset}" if self.ner_dataset else "TC")


@dataclass(frozen=True)
class Workers:
    """How `mtpf-eval --workers N` runs: N processes, the command results.json records, the families to score and
    where their data lives."""

    count: int
    command: str
    families: tuple[str, ...] = ("ner", "tc")
    sources: DataSources = field(default_factory=DataSources)


def pending_jobs(
    models: list[str],
    hashes: dict[str, str],
    settings: SuiteSettings,
    has: Callable[[str, str, ScoreKey], bool],
    families: tuple[str, ...] = ("ner", "tc"),
) -> list[EvalJob]:
    """The jobs with scores still to make; `hashes` maps each label to the config hash of its current weights and
    `has(label, config_hash, ScoreKey)` says whether a score is there (`SuiteRun.has`)."""
    jobs = []
    for spec in models:
        label = split_label(spec)[0]
        config_hash = hashes[label]
        if "ner" in families:
            for dataset in settings.ner_datasets:
                name = ner_dataset_name(dataset)
                runs = [(f, s) for f in settings.fractions for s in settings.seeds]
                todo = sum(not has(label, config_hash, ScoreKey("ner", name, f, s)) for f, s in runs)
                if todo:
                    jobs.append(EvalJob(spec, dataset, float(todo)))
        if "tc" in families:
            names = [TC_TASKS[column].mteb_name for column in settings.tc_tasks]
            todo = sum(not has(label, config_hash, ScoreKey("tc", name)) for name in names)  # TC: full data, seed 0
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
    models: list[str], settings: SuiteSettings, output: str | os.PathLike, workers: Workers
) -> Path:
    """Run the pending jobs in `workers.count` processes and merge their folders into `output`.

    `workers.command` is recorded in results.json in place of the per-job runs. TC tasks that cannot run here (no
    local copy, Hub offline) are not planned as work; a job still lists them as not evaluated.
    """
    output = Path(output)
    results = output / "results.json"
    previous = ResultsStore(settings, output)  # refuses an output of another suite or protocol, before any work
    hashes = {label: model_hash(path) for label, path in map(split_label, models)}
    for record in previous.records:
        if hashes.get(record.model, record.config_hash) != record.config_hash:
            raise ValueError(
                f"{results}: holds scores of {record.model!r} from other weights (config hash {record.config_hash}, "
                f"now {hashes[record.model]}); give the new weights another label or use another --output."
            )
    sources, command = workers.sources, workers.command
    runnable = [
        c for c in settings.tc_tasks if sources.hub_reachable or is_local_available(TC_TASKS[c], sources.tc_root)
    ]
    pending = pending_jobs(models, hashes, replace(settings, tc_tasks=runnable), previous.has, workers.families)
    shares = deal(pending, workers.count)
    if not shares:
        logger.info("%s: every score is already there", results)
        return results
    parts = output / WORKERS_DIR
    folders = [parts / f"worker-{i}" for i in range(len(shares))]
    if results.is_file():
        for folder in folders:
            merge_results(folder, [output], command=command)
    threads = max(1, len(os.sched_getaffinity(0)) // len(shares))
    roots = {"ner_root": str(sources.ner_root), "tc_root": str(sources.tc_root), "hub_reachable": sources.hub_reachable}
    for i, share in enumerate(shares):
        logger.info("worker %d (%d threads): %s", i, threads, "; ".join(job.describe() for job in share))
        write_job_file(parts / f"worker-{i}.json", settings, folders[i], share, roots)
    with ThreadPoolExecutor(len(shares)) as pool:
        failures = [failure for failure in pool.map(lambda i: _run_worker(i, parts, threads), range(len(shares)))]
    failures = [failure for failure in failures if failure]
    if failures:
        raise SystemExit(f"mtpf-eval --workers: {'; '.join(failures)}. Rerun the same command to resume.")
    order = [split_label(spec)[0] for spec in models]
    path = merge_results(output, folders, command, order, keep_commands=False)
    for i, folder in enumerate(folders):
        shutil.rmtree(folder)
        (parts / f"worker-{i}.json").unlink(missing_ok=True)
    return path


def write_job_file(path: Path, settings: SuiteSettings, folder: Path, jobs: list[EvalJob], roots: dict) -> None:
    """A worker's whole assignment as data: the suite's settings, its results folder, its jobs, the data roots."""
    payload = {"settings": asdict(settings), "output": str(folder), "jobs": [asdict(job) for job in jobs], **roots}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def run_job_file(path: str | os.PathLike) -> None:
    """A worker: each job is one `SuiteRun` over one model, restricted to one NER dataset or to TC."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    settings = settings_from_dict(data["settings"])
    for job in (EvalJob(**job) for job in data["jobs"]):
        start = time.monotonic()
        only = replace(settings, ner_datasets=[job.ner_dataset] if job.ner_dataset else [])
        sources = DataSources(data["ner_root"], data["tc_root"], data["hub_reachable"])
        run = SuiteRun(only, data["output"], sources)
        run.run([job.model], ner=job.ner_dataset is not None, tc=job.ner_dataset is None)
        logger.info("%s done in %.0f s", job.describe(), time.monotonic() - start)


def _run_worker(index: int, parts: Path, threads: int) -> str:
    """Run one worker process over its job file; returns an error message, or '' when all succeeded."""
    log_path = parts / f"worker-{index}.log"
    command = [sys.executable, "-m", "mtpf.evaluation.parallel", str(parts / f"worker-{index}.json")]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"+ {' '.join(command)}\n")
        log.flush()
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, check=False)
    if process.returncode != 0:
        return f"worker {index} failed (exit {process.returncode}, log {log_path})"
    return ""


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mteb").setLevel(logging.WARNING)
    run_job_file(sys.argv[1])
