"""The quality sweep: one resumable job per (recipe, pre-finetuning seed, protocol), evaluated, then summarised
against the base.

    ROOT/base/                      the base model's jobs (no pre-finetuning, so no seed)
    ROOT/<recipe>-s<seed>/train/    train_mtpf.py's output_dir (checkpoints: a killed run resumes)
                         release/   the trained release (written atomically: its presence means training is done)
                         train-cpu.json   the training's CPU seconds (every protocol's record, and every recipe
                                          `from` this one, reports them as its `train` seconds)
                         release-interpolated/   for recipes with an interpolation
                         screen/    the screen protocol's results.json (resumes per dataset), probe.json
                         DONE.json  written last: the screen's scores and CPU seconds; a job with it is never rerun
                         quick/     the confirming protocol's results.json (resumes per dataset)
                         DONE-quick.json   its completion marker

Two protocols: `screen` (about a quarter of the quick suite's cost, every recipe at every seed) and `quick` (the quick
suite's TC in full and its NER LoRA protocol on two datasets at full and 10 % data, for the candidates).
`rank_agreement` says whether the screen orders models as the quick protocol does, on the models run on both.

A kill at any point costs at most the step in flight. CPU seconds are measured per step (the training subprocess's
children time; the screen's own process time) and add up in DONE.json. Several sweep processes may share one ROOT
(e.g. one per seed on a machine with more cores): a job, and a training, is locked (`flock`) while one runs it; the
others take the next free job and come back for the locked ones at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scipy import stats as scipy_stats

from mtpf.evaluation.ner_probe import ProbeProtocol, probe_ner
from mtpf.evaluation.suites import suite_settings
from mtpf.io import atomic_write_text
from mtpf.quality.recipes import Recipe, RecipeBook
from mtpf.quality.stats import paired_delta, standard_error

logger = logging.getLogger(__name__)
DONE = "DONE.json"
MARKERS = {"screen": DONE, "quick": "DONE-quick.json"}  # each protocol's completion marker in a job folder
TRAIN_CPU = "train-cpu.json"  # the training's CPU seconds, written with the release: every job of it reports them
REPO_ROOT = Path(__file__).resolve().parents[2]
# The screen: the `quick` suite's protocols, cut to about a quarter of their cost (see SCREEN_DESCRIPTION).
SCREEN_TC_ROWS, SCREEN_TC_EXPERIMENTS = 1024, 5
SCREEN_LORA_DATASET, SCREEN_LORA_FRACTION = "mit_restaurant", 0.1
SCREEN_PROBE_DATASETS = ("conll2003", "mit_restaurant", "jnlpba")
SCREEN_DESCRIPTION = (
    f"screen: TC = the quick suite's 10 local MTEB tasks with eval splits capped at {SCREEN_TC_ROWS} rows and "
    f"{SCREEN_TC_EXPERIMENTS} probe experiments; NER full = mean entity F1 of a logistic-regression probe on frozen "
    f"first-sub-token features (ner slot merged) of {', '.join(SCREEN_PROBE_DATASETS)} "
    f"({ProbeProtocol.max_train_sentences} train / {ProbeProtocol.max_test_sentences} test sentences each); "
    f"NER 10 % = the quick suite's LoRA protocol on {SCREEN_LORA_DATASET} with {SCREEN_LORA_FRACTION:.0%} of its "
    "training subset."
)
# The confirmation: the quick suite's TC as is; its NER LoRA protocol on the two datasets below at full and 10 % data
# (the quick suite runs five datasets at full data only: about 1 CPU-hour; this cut keeps it near 25 CPU-minutes).
QUICK_NER_DATASETS, QUICK_FRACTIONS = ("conll2003", "mit_restaurant"), (1.0, 0.1)
# A recipe's NER runs at downstream seed 0 (the LoRA's and head's initialisation and data order); its pre-finetuning
# seeds already vary what that run sees. The base has no pre-finetuning seed, and moving the downstream seed moves the
# base and a release apart (results/quality/downstream-seeds/), so one base run is an error every difference shares
# and the paired SE cannot see: the base runs at these seeds and its mean's SE is added to each difference's.
BASE_DOWNSTREAM_SEEDS = (0, 1, 2)
QUICK_DESCRIPTION = (
    "quick: TC = the quick suite's 10 local MTEB tasks as the suite runs them (eval splits capped at 2,048 rows, 10 "
    f"probe experiments); NER full and NER 10 % = the quick suite's LoRA protocol on {', '.join(QUICK_NER_DATASETS)} "
    "with all and 10 % of its 1,000-sentence training subset (mean test F1); the base's NER at downstream seeds "
    f"{' '.join(map(str, BASE_DOWNSTREAM_SEEDS))} (a recipe's at 0), its mean's SE added to every difference's."
)
DESCRIPTIONS = {"screen": SCREEN_DESCRIPTION, "quick": QUICK_DESCRIPTION}


@contextlib.contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created) while the block runs; without `wait`, yield False at once if another
    process holds it. The lock goes with the process, so a killed sweep leaves none behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def job_dir(root: Path, recipe: str, seed: int | None) -> Path:
    return root / ("base" if seed is None else f"{recipe}-s{seed}")


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(book: RecipeBook, recipe: Recipe, seed: int, folder: Path, overrides: list[str]) -> tuple[Path, float]:
    """The recipe's trained release at this seed (train_mtpf.py in a subprocess, resuming its checkpoints) and the CPU
    seconds its training took, whichever process trained it (recorded in `TRAIN_CPU` beside the release)."""
    release = folder / "release"
    with locked(folder / ".train.lock"):  # another sweep process may be training it: wait for its release
        if not (release / "backbone" / "config.json").is_file():
            seconds = _train(book, recipe, seed, folder, overrides)
            atomic_write_text(folder / TRAIN_CPU, json.dumps({"seconds": round(seconds, 1)}) + "\n")
    record = folder / TRAIN_CPU
    return release, json.loads(record.read_text(encoding="utf-8"))["seconds"] if record.is_file() else 0.0


def _train(book: RecipeBook, recipe: Recipe, seed: int, folder: Path, overrides: list[str]) -> float:
    release = folder / "release"
    command = [
        sys.executable,
        str(REPO_ROOT / "train_mtpf.py"),
        str(book.base_config),
        *recipe.train_argv(),
        *overrides,
        "--seed",
        str(seed),
        "--output_dir",
        str(folder / "train"),
        "--release_dir",
        str(release),
        "--report_to",
        "none",
        "--resume_from_checkpoint",
        "last",
    ]
    before = cpu_of_children()
    with open(folder / "train.log", "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"training {folder.name} failed (exit {result.returncode}); see {folder / 'train.log'}")
    return cpu_of_children() - before


def interpolated(recipe: Recipe, trained: Path, folder: Path) -> Path:
    from mtpf.interpolation import Interpolation, interpolate_release

    target = folder / "release-interpolated"
    if (target / "backbone" / "config.json").is_file():
        return target
    layer_alphas = list(recipe.layer_alphas) if recipe.layer_alphas else None
    return interpolate_release(trained, target, Interpolation(recipe.interpolation, layer_alphas))


def screen(model: str, folder: Path, label: str) -> dict[str, Any]:
    """The screen protocol on one model; each part resumes from what `folder` already holds."""
    from mtpf.evaluation.suite import SuiteRun
    from mtpf.models import load_model

    settings = suite_settings(
        "quick",
        ner_datasets=[SCREEN_LORA_DATASET],
        fractions=[SCREEN_LORA_FRACTION],
        tc={"max_eval_rows": SCREEN_TC_ROWS, "n_experiments": SCREEN_TC_EXPERIMENTS},
    )
    results = SuiteRun(settings, folder / "screen", command=f"quality screen {label}={model}")
    results.run([f"{label}={model}"])
    probe_path = folder / "screen" / "probe.json"
    probes = saved_probes(folder, "screen")
    candidate = None
    for dataset in SCREEN_PROBE_DATASETS:
        if dataset not in probes:
            candidate = candidate or load_model(f"{label}={model}")
            probes[dataset] = asdict(probe_ner(candidate, dataset, _ner_root(), ProbeProtocol()))
            atomic_write_text(probe_path, json.dumps(probes, indent=2) + "\n")
    return saved_scores(folder, "screen", probes)


def quick(model: str, folder: Path, label: str, seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """The confirming protocol on one model, its NER at the given downstream seeds; it resumes per (dataset,
    fraction, seed) from what `folder` already holds."""
    from mtpf.evaluation.suite import SuiteRun

    settings = suite_settings(
        "quick", ner_datasets=list(QUICK_NER_DATASETS), fractions=list(QUICK_FRACTIONS), seeds=list(seeds)
    )
    SuiteRun(settings, folder / "quick", command=f"quality quick {label}={model}").run([f"{label}={model}"])
    return saved_scores(folder, "quick")


def saved_probes(folder: Path, protocol: str) -> dict[str, Any]:
    """The NER probes a job folder holds for one protocol (the screen's; none for the quick protocol)."""
    path = folder / protocol / "probe.json"
    return _read_json(path) if path.is_file() else {}


def saved_scores(folder: Path, protocol: str, probes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scores of what a job folder holds for one protocol (its suite results and probes): what a finished
    evaluation returns and what a later rescore recomputes, from the same files."""
    results = _read_json(folder / protocol / "results.json")
    return scores_of(results, saved_probes(folder, protocol) if probes is None else probes)


def _read_json(path: Path) -> Any:
    """A file the sweep wrote; a damaged one (e.g. edited by hand) is named, not a bare decoder traceback."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); rerun its job or restore the file.") from error


def evaluate(protocol: str, model: str, folder: Path, label: str, *, base: bool = False) -> dict[str, Any]:
    """The named protocol on one model (looked up when called, so that a test can stand in for one); the base's
    quick protocol runs its NER at `BASE_DOWNSTREAM_SEEDS`."""
    if protocol not in MARKERS:
        raise ValueError(f"Unknown protocol {protocol!r}; use one of {sorted(MARKERS)}.")
    if protocol == "quick":
        return quick(model, folder, label, seeds=BASE_DOWNSTREAM_SEEDS if base else (0,))
    return screen(model, folder, label)


def _ner_root() -> str:
    from mtpf.data.roots import NER_DATA

    return NER_DATA


def scores_of(results: dict[str, Any], probes: dict[str, Any]) -> dict[str, Any]:
    """The three numbers a recipe is judged by, plus the per-dataset scores behind them. NER full is the probe's
    mean where there are probes (the screen), else the mean of the full-data LoRA runs (the quick protocol)."""
    rows = results["results"]
    tc = {r["dataset"]: r["value"] for r in rows if r["family"] == "tc"}
    tc_std = {
        r["dataset"]: round(statistics.pstdev(r["experiments"]), 4)
        for r in rows
        if r["family"] == "tc" and r.get("experiments")
    }
    ner_rows = [{**r, "score": r["value"]} for r in rows if r["family"] == "ner"]
    full = (
        {"ner_full": statistics.fmean(run["test_f1"] for run in probes.values())}
        if probes
        else over_downstream_seeds(ner_rows, "ner_full", 1.0)
    )
    return {
        "tc": statistics.fmean(tc.values()),
        **full,
        **over_downstream_seeds(ner_rows, "ner_10", 0.1),
        "tc_tasks": tc,
        "tc_probe_std": tc_std,
        "ner_tasks": per_task(ner_rows),
        "ner_probe": {name: run["test_f1"] for name, run in probes.items()},
        **dev_scores(results.get("runs", []), probes),
    }


def per_task(runs: list[dict[str, Any]]) -> dict[str, float]:
    """`dataset@fraction` -> its score (`score` of each run), the mean over downstream seeds where there are several."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        scores.setdefault(f"{run['dataset']}@{run['fraction']:g}", []).append(run["score"])
    return {task: statistics.fmean(values) for task, values in scores.items()}


def over_downstream_seeds(runs: list[dict[str, Any]], family: str, fraction: float) -> dict[str, float]:
    """A NER family's score (the mean over datasets of the runs at `fraction`) and, where the runs cover more than one
    downstream seed, `<family>_downstream_se`: the SE of its mean over those seeds (the base's own noise)."""
    by_seed: dict[int, list[float]] = {}
    for run in runs:
        if run["fraction"] == fraction:
            by_seed.setdefault(run.get("seed", 0), []).append(run["score"])
    if not by_seed:
        return {}
    means = [statistics.fmean(values) for values in by_seed.values()]
    scores = {family: statistics.fmean(means)}
    if len(means) > 1:
        scores[f"{family}_downstream_se"] = standard_error(means)
    return scores


def dev_scores(runs: list[dict[str, Any]], probes: dict[str, Any]) -> dict[str, Any]:
    """The dev F1 of the LoRA NER runs (each run's best epoch, chosen on dev), per task and as the NER families'
    means: the numbers a choice between recipes rests on, the test F1 being what is reported. NER full has none on
    the screen (its probe has no dev split)."""
    dev_runs = [{**run, "score": run["dev_f1"]} for run in runs if "dev_f1" in run]
    means: dict[str, Any] = {"ner_tasks_dev": per_task(dev_runs)}
    for family, fraction in (("ner_full_dev", 1.0), ("ner_10_dev", 0.1)):
        if not (probes and fraction == 1.0):
            means |= over_downstream_seeds(dev_runs, family, fraction)
    return means


@dataclass(frozen=True)
class Sweep:
    """One sweep: its recipes, the folder of its jobs, the protocol its jobs run, and extra training flags (e.g. the
    teacher's folder) given to every training."""

    book: RecipeBook
    root: Path
    protocol: str = "screen"
    overrides: tuple[str, ...] = ()


def run_job(sweep: Sweep, recipe: Recipe, seed: int | None, *, wait: bool = True) -> dict[str, Any] | None:
    """One (recipe, seed, protocol) job to its completion marker (the base when seed is None); a finished job is
    read, not rerun. None when another process holds the job and `wait` is off."""
    folder = job_dir(sweep.root, recipe.name, seed)
    with locked(folder / f".job-{sweep.protocol}.lock", wait) as mine:
        if not mine:
            return None
        done = folder / MARKERS[sweep.protocol]
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        return _run_job(sweep, recipe, seed, folder)


def _run_job(sweep: Sweep, recipe: Recipe, seed: int | None, folder: Path) -> dict[str, Any]:
    book, root, overrides, protocol = sweep.book, sweep.root, list(sweep.overrides), sweep.protocol
    cpu = {"train": 0.0, protocol: 0.0}
    if seed is None:
        model = book.base_model
    else:
        source = book.recipes[recipe.source] if recipe.source else recipe
        model_path, cpu["train"] = train(book, source, seed, job_dir(root, source.name, seed), overrides)
        if recipe.interpolation is not None:
            model_path = interpolated(recipe, model_path, folder)
        model = str(model_path)
    start = time.process_time()
    label = recipe.name if seed is None else f"{recipe.name}-s{seed}"
    scores = evaluate(protocol, model, folder, label, base=seed is None)
    cpu[protocol] = time.process_time() - start
    job = {"recipe": recipe.name, "seed": seed, "model": model, "levers": recipe.levers()}
    record = job_record(job, scores, cpu, protocol)
    atomic_write_text(folder / MARKERS[protocol], json.dumps(record, indent=2) + "\n")
    logger.info(
        "job %s (%s) done: tc %.2f, ner_full %.2f, ner_10 %.2f", folder.name, protocol, *(scores[k] for k in FAMILIES)
    )
    return record


def job_record(job: dict[str, Any], scores: dict[str, Any], cpu: dict[str, float], protocol: str) -> dict[str, Any]:
    """A finished job's record, the content of its completion marker: what the job is (`recipe`, `seed`, `model`,
    `levers`), its scores, its CPU seconds per step and the protocol's description."""
    return {
        **job,
        **scores,
        "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        "protocol": DESCRIPTIONS[protocol],
    }


FAMILIES = ("tc", "ner_full", "ner_10")
DEV_FAMILIES = ("ner_full_dev", "ner_10_dev")  # in records written since 2026-12-07 (ninth session), and rescored ones


def finished_jobs(root: Path, protocol: str = "screen") -> list[dict[str, Any]]:
    """Every finished job of one protocol, with its folder's name (`job`) added."""
    paths = sorted(root.glob(f"*/{MARKERS[protocol]}"))
    return [json.loads(path.read_text(encoding="utf-8")) | {"job": path.parent.name} for path in paths]


def rank_agreement(screened: list[dict[str, Any]], confirmed: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the screen orders models as the quick protocol does: per family, Spearman's rho and Kendall's tau
    over the models (job folders, the base included) finished on both."""
    quick_by_job = {job["job"]: job for job in confirmed}
    both = [(job, quick_by_job[job["job"]]) for job in screened if job["job"] in quick_by_job]
    agreement: dict[str, Any] = {"models": [screen_job["job"] for screen_job, _ in both]}
    for family in FAMILIES:
        if len(both) < 3:
            agreement[family] = None
            continue
        first, second = [s[family] for s, _ in both], [q[family] for _, q in both]
        agreement[family] = {
            "spearman": round(float(scipy_stats.spearmanr(first, second).statistic), 3),
            "kendall": round(float(scipy_stats.kendalltau(first, second).statistic), 3),
        }
    return agreement


def cpu_per_seed(runs: list[dict[str, Any]], protocol: str) -> dict[str, Any]:
    """Mean CPU minutes per seed (training + protocol) over the seeds whose training CPU is on record (`cpu_seeds` of
    them): a training that predates the record counts as unknown, not as free."""
    known = [job for job in runs if job["cpu_seconds"]["train"] > 0]
    cpu = [job["cpu_seconds"]["train"] + job["cpu_seconds"][protocol] for job in known]
    return {"cpu_minutes": round(sum(cpu) / len(cpu) / 60, 1) if cpu else None, "cpu_seeds": len(known)}


def _cpu_text(entry: dict[str, Any]) -> str:
    if entry["cpu_minutes"] is None:
        return "unknown"
    seeds = len(entry["seeds"])
    return f"{entry['cpu_minutes']}" + (
        f" ({entry['cpu_seeds']} of {seeds} seeds)" if entry["cpu_seeds"] < seeds else ""
    )


def against_shipped(runs: dict[int, dict[str, Any]], shipped: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A recipe against the shipped one, paired over the seeds both have (the question a candidate must answer:
    does it beat what ships, not only the base); nothing where they share no seed."""
    seeds = sorted(set(runs) & set(shipped))
    if not seeds:
        return {}
    versus: dict[str, Any] = {"seeds": seeds}
    for family in FAMILIES + shared_dev_families([runs[s] for s in seeds] + [shipped[s] for s in seeds]):
        delta = paired_delta({s: runs[s][family] for s in seeds}, {s: shipped[s][family] for s in seeds})
        versus[family] = delta.as_dict() | {"text": delta.describe()}
    return {"vs_shipped": versus}


def shared_dev_families(jobs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The dev families every one of these jobs has (records older than dev scores have none)."""
    return tuple(family for family in DEV_FAMILIES if all(family in job for job in jobs))


def summarize(
    book: RecipeBook, jobs: list[dict[str, Any]], shipped: str | None = None, protocol: str = "screen"
) -> dict[str, Any]:
    """Per recipe, the paired difference to the base on each family (mean and SE over seeds) and its CPU cost."""
    base = next((job for job in jobs if job["seed"] is None), None)
    if base is None:
        raise ValueError("No finished base job: every difference is taken against the base.")
    recipes, runs_of = [], {}
    for name, recipe in book.recipes.items():
        runs = runs_of[name] = {job["seed"]: job for job in jobs if job["recipe"] == name and job["seed"] is not None}
        if not runs:
            continue
        inherited = book.recipes[recipe.source].levers() if recipe.source else {}  # what its release was trained with
        entry: dict[str, Any] = {"name": name, "levers": {**inherited, **recipe.levers()}, "seeds": sorted(runs)}
        for family in FAMILIES + shared_dev_families([base, *runs.values()]):
            delta = paired_delta({s: job[family] for s, job in runs.items()}, base[family])
            delta = delta.with_reference_se(base.get(f"{family}_downstream_se"))
            entry[family] = delta.as_dict() | {"text": delta.describe()}
        entry |= cpu_per_seed(list(runs.values()), protocol)
        entry["shipped"] = name == shipped
        recipes.append(entry)
    if runs_of.get(shipped):
        for entry in recipes:
            if not entry["shipped"]:
                entry |= against_shipped(runs_of[entry["name"]], runs_of[shipped])
    return {
        "protocol": DESCRIPTIONS[protocol],
        "base": {
            "model": base["model"],
            **{family: round(base[family], 3) for family in FAMILIES + shared_dev_families([base])},
            **{key: round(value, 3) for key, value in base.items() if key.endswith("_downstream_se")},
        },
        "recipes": recipes,
    }


def write_summary(summary: dict[str, Any], output: Path, command: str) -> None:
    """`summary.json` and the frontier table `RESULTS.md` (the command that made them at the top): the screen's table,
    then, where there is one, the quick protocol's and the two protocols' rank agreement."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Quality sweep: recipes against the base",
        "",
        f"Command: `{command}`",
        "",
        "Differences to the base: mean over pre-finetuning seeds ± one standard error of the paired differences "
        "(where the base's score is a mean over downstream seeds, its SE added in quadrature); "
        "`≈` = under two standard errors (no measurable change).",
        "",
        "## Screen",
        "",
        *_table(summary, "NER full (probe)", "CPU min / seed (training + screen)"),
    ]
    if "quick" in summary:
        lines += [
            "",
            "## Quick protocol (confirmation)",
            "",
            *_table(summary["quick"], "NER full", "CPU min / seed (training + quick)"),
            *_dev_table(summary["quick"]),
        ]
    if "rank_agreement" in summary:
        lines += ["", *_agreement_lines(summary["rank_agreement"])]
    atomic_write_text(output / "RESULTS.md", "\n".join(lines) + "\n")


def copy_job_records(root: Path, output: Path) -> list[Path]:
    """Every finished job's record into `output/jobs/` (`<job>.json` for the screen, `<job>.quick.json` for the quick
    protocol), so the committed results carry the per-task scores behind the table; records of jobs that are no
    longer in `root` (renamed or removed) go, so no stale job outlives its folder."""
    folder = output / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    suffixes = {"screen": ".json", "quick": ".quick.json"}
    written = []
    for protocol, suffix in suffixes.items():
        for marker in sorted(root.glob(f"*/{MARKERS[protocol]}")):
            target = folder / f"{marker.parent.name}{suffix}"
            atomic_write_text(target, marker.read_text(encoding="utf-8"))
            written.append(target)
    for stale in set(folder.glob("*.json")) - set(written):
        stale.unlink()
    return written


def rescore_jobs(root: Path, protocol: str) -> list[str]:
    """Recompute the scores of finished jobs from the results their folders hold, for records written before the
    scores gained a field (the dev F1); the rest of each record (seed, model, CPU seconds) is kept. Jobs whose
    folder holds only the marker (rebuilt from committed records) are left as they are. Returns the jobs rescored."""
    rescored = []
    for marker in sorted(root.glob(f"*/{MARKERS[protocol]}")):
        if not (marker.parent / protocol / "results.json").is_file():
            continue
        record = _read_json(marker) | saved_scores(marker.parent, protocol)
        atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
        rescored.append(marker.parent.name)
    return rescored


def _versus_shipped_table(section: dict[str, Any], full_label: str) -> list[str]:
    entries = [entry for entry in section["recipes"] if "vs_shipped" in entry]
    if not entries:
        return []
    shipped = next(entry["name"] for entry in section["recipes"] if entry["shipped"])
    lines = [
        "",
        f"Against the shipped `{shipped}`, paired over the seeds both have:",
        "",
        f"| recipe | seeds | TC | {full_label} | NER 10 % |",
        "|---|---|---|---|---|",
    ]
    for entry in entries:
        versus = entry["vs_shipped"]
        seeds = " ".join(map(str, versus["seeds"]))
        texts = " | ".join(versus[family]["text"] for family in FAMILIES)
        lines.append(f"| {entry['name']} | {seeds} | {texts} |")
    return lines


def _table(section: dict[str, Any], full_label: str, cpu_label: str) -> list[str]:
    base = section["base"]
    lines = [
        f"Protocol: {section['protocol']}",
        "",
        f"Base `{base['model']}`: TC {base['tc']:.2f}, {full_label} {_base_text(base, 'ner_full')}, "
        f"NER 10 % {_base_text(base, 'ner_10')}.",
        "",
        f"| recipe | levers | seeds | TC | {full_label} | NER 10 % | {cpu_label} |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in section["recipes"]:
        levers = ", ".join(f"`{k}={v}`" for k, v in entry["levers"].items()) or "(demo as is)"
        lines.append(
            f"| {entry['name']}{' (shipped)' if entry['shipped'] else ''} | {levers} | "
            f"{' '.join(map(str, entry['seeds']))} | {entry['tc']['text']} | {entry['ner_full']['text']} | "
            f"{entry['ner_10']['text']} | {_cpu_text(entry)} |"
        )
    return lines + _versus_shipped_table(section, full_label)


def _base_text(base: dict[str, Any], family: str) -> str:
    """The base's score, with its SE over downstream seeds where it was run at several."""
    se = base.get(f"{family}_downstream_se")
    return f"{base[family]:.2f}" + (f" ± {se:.2f} (mean over downstream seeds)" if se else "")


def _dev_table(section: dict[str, Any]) -> list[str]:
    """The NER dev F1 (each LoRA run's best epoch) against the base and the shipped recipe, for the recipes whose
    records carry it: a choice rests on these; the tables above report test."""
    entries = [entry for entry in section["recipes"] if any(family in entry for family in DEV_FAMILIES)]
    if not entries:
        return []
    base = section["base"]
    lines = [
        "",
        "NER dev F1 (the best epoch of each LoRA run), where the records carry it: what a choice rests on. Base: "
        + ", ".join(f"{family} {_base_text(base, family)}" for family in DEV_FAMILIES if family in base)
        + ".",
        "",
        "| recipe | seeds | NER full dev vs base | NER 10 % dev vs base | NER full dev vs shipped "
        "| NER 10 % dev vs shipped |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        versus = entry.get("vs_shipped", {})
        cells = [entry.get(family, {}).get("text", "—") for family in DEV_FAMILIES]
        cells += [versus.get(family, {}).get("text", "—") for family in DEV_FAMILIES]
        lines.append(f"| {entry['name']} | {' '.join(map(str, entry['seeds']))} | {' | '.join(cells)} |")
    return lines


def _agreement_lines(agreement: dict[str, Any]) -> list[str]:
    lines = [
        "## Does the screen rank models as the quick protocol does?",
        "",
        f"Models on both protocols ({len(agreement['models'])}): {', '.join(agreement['models'])}.",
        "",
        "| family | Spearman rho | Kendall tau |",
        "|---|---|---|",
    ]
    for family in FAMILIES:
        value = agreement[family]
        lines.append(
            f"| {family} | {value['spearman']:+.2f} | {value['kendall']:+.2f} |"
            if value
            else f"| {family} | (fewer than 3 models) | |"
        )
    return lines


def run_sweep(sweep: Sweep, seeds: list[int], only: list[str] | None = None) -> list[dict[str, Any]]:
    """Every job of the protocol not yet done: the base first, then each recipe seed by seed (seed-major, so that
    every recipe has its first seed before any has its third)."""
    book = sweep.book
    names = only or list(book.recipes)
    unknown = sorted(set(names) - set(book.recipes))
    if unknown:
        raise ValueError(f"Unknown recipes {unknown}; {book.path} has {sorted(book.recipes)}.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    jobs = [(Recipe("base"), None)] + [(book.recipes[name], seed) for seed in seeds for name in names]
    results: dict[int, dict[str, Any]] = {}
    for wait in (False, True):  # first every free job, then (waiting) those other processes held
        for index, (recipe, seed) in enumerate(jobs):
            if index not in results:
                record = run_job(sweep, recipe, seed, wait=wait)
                if record is not None:
                    results[index] = record
    return [results[index] for index in range(len(jobs))]


def summarize_all(book: RecipeBook, root: Path, shipped: str | None = None) -> dict[str, Any]:
    """The screen's summary, with the quick protocol's and the rank agreement where any quick job has finished."""
    screened = finished_jobs(root, "screen")
    summary = summarize(book, screened, shipped) | {"base_levers": book.base_levers()}
    confirmed = finished_jobs(root, "quick")
    if confirmed:
        summary["quick"] = summarize(book, confirmed, shipped, protocol="quick")
        summary["rank_agreement"] = rank_agreement(screened, confirmed)
    return summary
