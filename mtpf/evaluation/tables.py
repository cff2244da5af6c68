"""`results.md`: the paper's table layouts (Tables 1, 5, 6, 11) from a results payload.

Scores are means over seeds. Averages run over the datasets every model has; a dataset some model lacks is
shown as `–` and named under the table, never averaged in silently. Gains are against the first model.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from mtpf.evaluation.ner_data import PAPER_NER_DATASETS
from mtpf.evaluation.tc import TC_TASKS
from mtpf.results import ResultRecord

Scores = dict[str, dict[str, float]]  # model -> column -> value


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
    lines += ["## Summary (Table 1 layout)", "", *_summary(models, ner_full, tc), ""]
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
    lines += [*_table(models, tc, _columns(tc, list(TC_TASKS))), ""]
    if payload.get("missing"):
        lines += ["## Not evaluated", ""]
        lines += [*_missing_lines(payload["missing"], models), ""]
    return "\n".join(lines)


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


def _table(models: list[str], scores: Scores, columns: list[str]) -> list[str]:
    if not columns:
        return ["_No results._"]
    common = _common(models, scores, columns)
    lines = [f"| Model | {' | '.join(columns)} | Average |", "|---" * (len(columns) + 2) + "|"]
    base = _average(scores, models[0], common)
    for i, model in enumerate(models):
        cells = [f"{scores[model][c]:.1f}" if c in scores.get(model, {}) else "–" for c in columns]
        lines.append(
            f"| `{model}` | {' | '.join(cells)} | {_with_gain(_average(scores, model, common), base, i == 0)} |"
        )
    left_out = [c for c in columns if c not in common]
    if left_out:
        lines += ["", f"Average over the {len(common)} datasets every model has; left out: {', '.join(left_out)}."]
    return lines


def _summary(models: list[str], ner: Scores, tc: Scores) -> list[str]:
    ner_cols = _common(models, ner, _columns(ner, list(PAPER_NER_DATASETS.values())))
    tc_cols = _common(models, tc, _columns(tc, list(TC_TASKS)))
    lines = [
        f"| Model | NER F1 ({len(ner_cols)} DS) | TC accuracy ({len(tc_cols)} DS) | Average |",
        "|---|---|---|---|",
    ]
    base = [_average(ner, models[0], ner_cols), _average(tc, models[0], tc_cols)]
    for i, model in enumerate(models):
        values = [_average(ner, model, ner_cols), _average(tc, model, tc_cols)]
        both = mean(values) if None not in values else None
        base_both = mean(base) if None not in base else None
        cells = [_with_gain(v, b, i == 0) for v, b in zip(values, base)] + [_with_gain(both, base_both, i == 0)]
        lines.append(f"| `{model}` | {' | '.join(cells)} |")
    return lines
