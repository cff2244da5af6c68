"""`results.md`: the paper's table layouts (Tables 1, 5, 6, 11) from a results payload.

Scores are means over seeds. Averages run over the datasets every model has; a dataset some model lacks is
shown as `–` and named under the table, never averaged in silently. Gains are against the first model.

TC scores are means over MTEB's probe experiments, shown with their standard deviation. Every model's
experiment i trains the probe on the same draw of examples, so two models are compared on the paired
per-experiment differences: a difference smaller than two standard errors of those is marked `≈` (within noise).
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean, stdev

from mtpf.apps.ner.data import PAPER_NER_DATASETS
from mtpf.evaluation.tc import TC_TASKS
from mtpf.results import ResultRecord

Scores = dict[str, dict[str, float]]  # model -> column -> value
Experiments = dict[str, dict[str, list[float]]]  # model -> TC column -> accuracy of each probe experiment
NOISE_MARK = "≈"
NOISE_NOTE = (
    f"{NOISE_MARK}: within noise against the first model (the mean paired per-experiment difference is under two "
    "standard errors); ± is the standard deviation over MTEB's probe experiments."
)
TOXIC_CHAT = "TC"  # the Table 6 column of ToxicChat, the task most sensitive to a model's class balance


def results_markdown(payload: dict) -> str:
    records = [ResultRecord(**r) for r in payload["results"]]
    models = _model_order(payload, records)
    suite = payload.get("suite", {})
    lines = [f"# Evaluation results: suite `{suite.get('name', '?')}`", ""]
    commands = suite_commands(suite)
    if commands:
        lines += ["Commands (in order):" if len(commands) > 1 else "Command:", ""]
        lines += [f"    {command}" for command in commands] + [""]
    if suite.get("description"):
        lines += [suite["description"], ""]
    lines += ["Models (gains are against the first):", ""]
    lines += [f"{i}. `{m}`" for i, m in enumerate(models, start=1)] + [""]
    if not models:
        return "\n".join([*lines, "_No results yet._", ""])
    ner_full = _scores(records, "ner", 1.0)
    tc = _scores(records, "tc")
    runs = _experiments(records)
    lines += ["## Summary (Table 1 layout)", "", *_summary(models, ner_full, tc, runs), ""]
    lines += ["## NER, full training data (Table 5 layout): test F1", ""]
    lines += [*_table(models, ner_full, _columns(ner_full, list(PAPER_NER_DATASETS.values()))), ""]
    fractions = sorted({r.fraction for r in records if r.family == "ner" and r.fraction < 1.0}, reverse=True)
    if fractions:
        lines += ["## NER with limited training data (Table 11 layout): test F1", ""]
        for fraction in fractions:
            scores = _scores(records, "ner", fraction)
            lines += [
                f"Data portion {fraction:.0%}:",
                "",
                *_table(models, scores, _columns(scores, list(PAPER_NER_DATASETS.values()))),
                "",
            ]
    lines += ["## Text classification (Table 6 layout): MTEB accuracy", ""]
    lines += [*_table(models, tc, _columns(tc, list(TC_TASKS)), runs), ""]
    if payload.get("missing"):
        lines += ["## Not evaluated", ""]
        lines += [*_missing_lines(payload["missing"], models), ""]
    return "\n".join(lines)


def score_lines(payload: dict) -> list[str]:
    """Every score of a results payload at full precision, one line each (what `mtpf-eval` prints at the end)."""
    lines = []
    for r in (ResultRecord(**entry) for entry in payload["results"]):
        spread = f" ± {stdev(r.experiments):.2f}" if r.experiments and len(r.experiments) > 1 else ""
        where = f"{r.dataset_name or r.dataset} {r.split}" + (
            f" {r.fraction:.0%} seed {r.seed}" if r.family == "ner" else ""
        )
        lines.append(f"{r.model}  {r.family}  {where}  {r.metric} {r.value:.2f}{spread}")
    return lines


def _missing_lines(missing: list[dict], models: list[str]) -> list[str]:
    """One line per dataset and reason, naming the models (or 'every model')."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for entry in missing:
        grouped.setdefault((entry["family"], entry["dataset"], entry["reason"]), []).append(entry["model"])
    lines = []
    for (family, dataset, reason), names in grouped.items():
        who = "every model" if set(names) >= set(models) else ", ".join(f"`{n}`" for n in names)
        lines.append(f"- {family} {dataset} ({who}): {reason}")
    return lines


def family_averages(records: list[ResultRecord], family: str, fraction: float | None = None) -> dict[str, float]:
    """Mean score per model over the datasets every model has (main splits, seeds averaged)."""
    scores = _scores(records, family, fraction)
    models = list(scores)
    preferred = list(PAPER_NER_DATASETS.values()) if family == "ner" else list(TC_TASKS)
    common = _common(models, scores, _columns(scores, preferred))
    return {model: _average(scores, model, common) for model in models}


def suite_commands(suite: dict) -> list[str]:
    """Every command that made a results file, oldest first (earlier runs resumed or merged, then the last)."""
    return [*suite.get("previous_commands", []), *([suite["command"]] if suite.get("command") else [])]


def _model_order(payload: dict, records: list[ResultRecord]) -> list[str]:
    order = [m["model"] for m in payload.get("models", [])]
    for record in records:
        if record.model not in order:
            order.append(record.model)
    return list(dict.fromkeys(order))


def _main_split(record: ResultRecord) -> bool:
    """The split a table shows: the last eval split MTEB lists (test; FPB's train; TTS's test_2021)."""
    if record.family == "ner":
        return record.split == "test"
    spec = TC_TASKS.get(record.dataset_name or "")
    return spec is None or record.split == spec.eval_splits[-1]


def _scores(records: list[ResultRecord], family: str, fraction: float | None = None) -> Scores:
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.family == family and (fraction is None or r.fraction == fraction) and _main_split(r):
            groups[(r.model, r.dataset_name or r.dataset)].append(r.value)
    scores: Scores = defaultdict(dict)
    for (model, column), values in groups.items():
        scores[model][column] = mean(values)
    return scores


def _experiments(records: list[ResultRecord]) -> Experiments:
    """Per-experiment TC accuracies of the main split (records written before they were kept have none)."""
    runs: Experiments = defaultdict(dict)
    for r in records:
        if r.family == "tc" and r.experiments and _main_split(r):
            runs[r.model].setdefault(r.dataset_name or r.dataset, list(r.experiments))
    return runs


def _experiment_means(runs: Experiments, model: str, columns: list[str]) -> list[float] | None:
    """Experiment i's accuracy averaged over `columns` (None unless every column kept equally many)."""
    rows = [runs.get(model, {}).get(c) for c in columns]
    if not columns or None in rows or len({len(row) for row in rows}) != 1:
        return None
    return [mean(values) for values in zip(*rows)]


def within_noise(first: list[float] | None, other: list[float] | None) -> bool | None:
    """Whether two models' paired experiments differ by less than two standard errors (None: cannot tell)."""
    if not first or not other or len(first) != len(other) or len(first) < 2:
        return None
    differences = [b - a for a, b in zip(first, other)]
    standard_error = stdev(differences) / len(differences) ** 0.5
    return abs(mean(differences)) < 2 * standard_error or standard_error == mean(differences) == 0


def _noise_mark(runs: Experiments, models: list[str], model: str, columns: list[str]) -> str:
    if model == models[0]:
        return ""
    noise = within_noise(_experiment_means(runs, models[0], columns), _experiment_means(runs, model, columns))
    return NOISE_MARK if noise else ""


def _tc_cell(scores: Scores, runs: Experiments, models: list[str], model: str, column: str) -> str:
    if column not in scores.get(model, {}):
        return "–"
    values = runs.get(model, {}).get(column)
    spread = f" ± {stdev(values):.1f}" if values and len(values) > 1 else ""
    return f"{scores[model][column]:.1f}{spread}{_noise_mark(runs, models, model, [column])}"


def _columns(scores: Scores, preferred: list[str]) -> list[str]:
    present = {column for row in scores.values() for column in row}
    return [c for c in preferred if c in present] + sorted(present - set(preferred))


def _common(models: list[str], scores: Scores, columns: list[str]) -> list[str]:
    return [c for c in columns if all(c in scores.get(m, {}) for m in models)]


def _average(scores: Scores, model: str, columns: list[str]) -> float | None:
    values = [scores.get(model, {}).get(c) for c in columns]
    return mean(values) if columns and None not in values else None


def _with_gain(value: float | None, base: float | None, first: bool) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if first or base is None else f"{value:.1f} ({value - base:+.1f})"


def _table(models: list[str], scores: Scores, columns: list[str], runs: Experiments | None = None) -> list[str]:
    """One row per model; with `runs` (TC) cells carry their spread and the noise mark."""
    if not columns:
        return ["_No results._"]
    common = _common(models, scores, columns)
    lines = [f"| Model | {' | '.join(columns)} | Average |", "|---" * (len(columns) + 2) + "|"]
    base = _average(scores, models[0], common)
    for i, model in enumerate(models):
        if runs is None:
            cells = [f"{scores[model][c]:.1f}" if c in scores.get(model, {}) else "–" for c in columns]
            mark = ""
        else:
            cells = [_tc_cell(scores, runs, models, model, c) for c in columns]
            mark = _noise_mark(runs, models, model, common)
        average = _with_gain(_average(scores, model, common), base, i == 0)
        lines.append(f"| `{model}` | {' | '.join(cells)} | {average}{mark} |")
    left_out = [c for c in columns if c not in common]
    if left_out:
        lines += ["", f"Average over the {len(common)} datasets every model has; left out: {', '.join(left_out)}."]
    if runs:
        lines += ["", NOISE_NOTE]
    return lines


def _summary(models: list[str], ner: Scores, tc: Scores, runs: Experiments) -> list[str]:
    """NER and TC averages with gains; TC also without ToxicChat, whose score swings with class balance."""
    ner_cols = _common(models, ner, _columns(ner, list(PAPER_NER_DATASETS.values())))
    tc_cols = _common(models, tc, _columns(tc, list(TC_TASKS)))
    tc_rest = [c for c in tc_cols if c != TOXIC_CHAT]
    lines = [
        f"| Model | NER F1 ({len(ner_cols)} DS) | TC accuracy ({len(tc_cols)} DS) | "
        f"TC without ToxicChat ({len(tc_rest)} DS) | Average |",
        "|---|---|---|---|---|",
    ]
    base = [_average(ner, models[0], ner_cols), _average(tc, models[0], tc_cols)]
    base_rest = _average(tc, models[0], tc_rest)
    for i, model in enumerate(models):
        values = [_average(ner, model, ner_cols), _average(tc, model, tc_cols)]
        both = mean(values) if None not in values else None
        base_both = mean(base) if None not in base else None
        cells = [
            _with_gain(values[0], base[0], i == 0),
            _with_gain(values[1], base[1], i == 0) + _noise_mark(runs, models, model, tc_cols),
            _with_gain(_average(tc, model, tc_rest), base_rest, i == 0) + _noise_mark(runs, models, model, tc_rest),
            _with_gain(both, base_both, i == 0),
        ]
        lines.append(f"| `{model}` | {' | '.join(cells)} |")
    if runs:
        lines += ["", NOISE_NOTE]
    return lines
