"""The quality sweep's bookkeeping: recipe files, resumable jobs (a kill costs at most the step in flight), and the
summary's paired differences and rank agreement. Training is real (the smoke config); the protocols are replaced by
recorders."""

from __future__ import annotations

import json

import pytest

from mtpf.quality import sweep
from mtpf.quality.recipes import RecipeError, load_recipes
from tests.conftest import SMOKE_CONFIG


def recipe_file(tmp_path, recipes: str):
    path = tmp_path / "recipes.yaml"
    path.write_text(f"base_config: {SMOKE_CONFIG}\nbase_model: offline:tiny-bert\nrecipes:\n{recipes}")
    return path


RECIPES = """
  - name: plain
    args: {max_steps: 2}
  - name: plain-wise0.5
    from: plain
    interpolation: 0.5
"""


@pytest.mark.parametrize(
    ("recipes", "message"),
    [
        ("  - name: a\n  - name: a\n", "appears twice"),
        ("  - name: a/b\n", "needs a `name`"),
        ("  - name: a\n    from: b\n", "not a training recipe"),
        ("  - name: a\n    args: {max_steps: 2}\n  - name: b\n    from: a\n    args: {seed: 1}\n", "takes no `args`"),
        ("  - name: a\n    lr: 1\n", "unknown fields"),
        ("  - name: a\n    args: {release_interpolation: 0.5}\n", "use `from` and `interpolation`"),
    ],
)
def test_recipe_file_errors_name_the_file_and_recipe(tmp_path, recipes, message):
    path = recipe_file(tmp_path, recipes)
    with pytest.raises(RecipeError, match=message) as error:
        load_recipes(path)
    assert str(path) in str(error.value)


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, pseudo_label_cache, monkeypatch):
    book = load_recipes(recipe_file(tmp_path, RECIPES))
    assert book.recipes["plain-wise0.5"].levers() == {"release_interpolation": 0.5}
    screened = []

    def fake_screen(model, folder, label):
        if len(screened) == 2 and not (tmp_path / "killed").exists():
            (tmp_path / "killed").touch()
            raise KeyboardInterrupt  # the sweep is stopped in the middle of a screen
        screened.append(label)
        score = 70.0 + len(screened)
        return {"tc": score, "ner_full": score - 10, "ner_10": score - 20}

    monkeypatch.setattr(sweep, "screen", fake_screen)
    root = tmp_path / "jobs"
    job_sweep = sweep.Sweep(book, root, overrides=("--pseudo_label_dir", str(pseudo_label_cache)))
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(job_sweep, seeds=[0])
    assert screened == ["base", "plain-s0"]
    assert (root / "plain-s0" / "DONE.json").is_file() and not (root / "plain-wise0.5-s0" / "DONE.json").exists()

    jobs = sweep.run_sweep(job_sweep, seeds=[0])
    assert screened == ["base", "plain-s0", "plain-wise0.5-s0"]  # nothing finished was screened again
    assert (root / "plain-s0" / "train.log").read_text().count("$ ") == 1  # nor trained again
    assert (root / "plain-wise0.5-s0" / "release-interpolated" / "backbone" / "config.json").is_file()
    assert [job["recipe"] for job in jobs] == ["base", "plain", "plain-wise0.5"]
    trained = json.loads((root / "plain-s0" / sweep.TRAIN_CPU).read_text())["seconds"]
    assert trained > 0  # whichever job trained it, every model of that training reports its cost
    assert jobs[1]["cpu_seconds"]["train"] == jobs[2]["cpu_seconds"]["train"] == trained

    summary = sweep.summarize(book, sweep.finished_jobs(root), shipped="plain-wise0.5")
    by_name = {entry["name"]: entry for entry in summary["recipes"]}
    assert by_name["plain"]["tc"]["mean_delta"] == pytest.approx(1.0)  # 72 - 71, one seed: no SE
    assert by_name["plain"]["tc"]["se"] is None
    assert by_name["plain-wise0.5"]["shipped"] and not by_name["plain"]["shipped"]
    assert by_name["plain-wise0.5"]["levers"] == {"max_steps": 2, "release_interpolation": 0.5}  # its training too
    assert by_name["plain-wise0.5"]["cpu_minutes"] >= by_name["plain"]["cpu_minutes"] - 0.1  # its training counts
    sweep.write_summary(summary, tmp_path / "results", "test")
    assert json.loads((tmp_path / "results" / "summary.json").read_text())["recipes"][0]["name"] == "plain"
    assert "| plain-wise0.5 (shipped) |" in (tmp_path / "results" / "RESULTS.md").read_text()


def test_a_job_another_process_holds_is_skipped_without_waiting(tmp_path, monkeypatch):
    book = load_recipes(recipe_file(tmp_path, RECIPES))
    monkeypatch.setattr(sweep, "screen", lambda model, folder, label: {"tc": 1.0, "ner_full": 2.0, "ner_10": 3.0})
    root = tmp_path / "jobs"
    with sweep.locked(root / "base" / ".job-screen.lock"):  # as another sweep process would hold it
        assert sweep.run_job(sweep.Sweep(book, root), sweep.Recipe("base"), None, wait=False) is None
        assert not (root / "base" / "DONE.json").exists()
    assert sweep.run_job(sweep.Sweep(book, root), sweep.Recipe("base"), None, wait=False)["tc"] == 1.0


def test_the_quick_protocol_has_its_own_jobs_and_is_ranked_against_the_screen(tmp_path, monkeypatch):
    book = load_recipes(recipe_file(tmp_path, "  - name: a\n  - name: b\n"))
    root = tmp_path / "jobs"
    quick_scores = {"base": 10, "a-s0": 30, "b-s0": 20, "a-s1": 40, "b-s1": 50}
    screen_scores = {"base": 1, "a-s0": 2, "b-s0": 3, "a-s1": 4}  # b-s1 was never screened
    for job in quick_scores:
        release = root / job / "release" / "backbone"
        release.mkdir(parents=True)
        (release / "config.json").write_text("{}")  # a trained release: nothing to train
    for job, score in screen_scores.items():
        record = {
            "recipe": job.split("-")[0],
            "seed": None if job == "base" else int(job[-1]),
            "model": job,
            "cpu_seconds": {"train": 0, "screen": 1},
            "tc": score,
            "ner_full": score,
            "ner_10": -score,
        }
        (root / job / sweep.DONE).write_text(json.dumps(record))
    evaluated = []

    def fake_quick(model, folder, label, seeds=(0,)):
        evaluated.append(label)
        assert seeds == (sweep.BASE_DOWNSTREAM_SEEDS if label == "base" else (0,))
        score = quick_scores[folder.name]
        return {"tc": score, "ner_full": score, "ner_10": score}

    monkeypatch.setattr(sweep, "quick", fake_quick)
    monkeypatch.setattr(sweep, "screen", lambda *args: pytest.fail("the screen is done: never rerun"))
    quick = sweep.Sweep(book, root, protocol="quick")
    sweep.run_sweep(quick, seeds=[0, 1], only=["a", "b"])
    sweep.run_sweep(quick, seeds=[0, 1], only=["a", "b"])  # all done: nothing runs again
    assert evaluated == ["base", "a-s0", "b-s0", "a-s1", "b-s1"]
    assert (root / "a-s0" / "DONE-quick.json").is_file()

    summary = sweep.summarize_all(book, root)
    assert summary["quick"]["protocol"] == sweep.QUICK_DESCRIPTION
    by_name = {entry["name"]: entry for entry in summary["quick"]["recipes"]}
    assert by_name["a"]["tc"]["mean_delta"] == pytest.approx(25.0)  # (30 + 40) / 2 - 10
    agreement = summary["rank_agreement"]
    assert agreement["models"] == ["a-s0", "a-s1", "b-s0", "base"]  # b-s1 has no screen
    assert agreement["tc"] == {"spearman": pytest.approx(0.8), "kendall": pytest.approx(0.667, abs=1e-3)}
    assert agreement["ner_10"]["spearman"] == pytest.approx(-0.8)  # the screen ranked NER 10 % the other way round
    sweep.write_summary(summary, tmp_path / "results", "test")
    text = (tmp_path / "results" / "RESULTS.md").read_text()
    assert "## Quick protocol (confirmation)" in text and "| tc | +0.80 | +0.67 |" in text
    stale = tmp_path / "results" / "jobs" / "renamed-s0.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    sweep.copy_job_records(root, tmp_path / "results")
    copied = sorted(path.name for path in (tmp_path / "results" / "jobs").iterdir())
    assert "a-s0.json" in copied and "b-s1.quick.json" in copied and "renamed-s0.json" not in copied
    assert json.loads((tmp_path / "results" / "jobs" / "a-s1.quick.json").read_text())["recipe"] == "a"


def test_cpu_cost_counts_only_seeds_whose_training_cpu_is_on_record():
    runs = [
        {"cpu_seconds": {"train": 600.0, "screen": 420.0}},
        {"cpu_seconds": {"train": 0.0, "screen": 420.0}},  # a training that predates the record: unknown, not free
    ]
    assert sweep.cpu_per_seed(runs, "screen") == {"cpu_minutes": 17.0, "cpu_seeds": 1}
    assert sweep.cpu_per_seed(runs[1:], "screen") == {"cpu_minutes": None, "cpu_seeds": 0}


def test_candidates_are_paired_against_the_shipped_recipe_on_the_seeds_both_have(tmp_path):
    book = load_recipes(recipe_file(tmp_path, "  - name: shipped\n  - name: candidate\n  - name: other\n"))
    cpu = {"train": 60.0, "screen": 60.0}

    def job(recipe, seed, tc):
        return {"recipe": recipe, "seed": seed, "model": recipe, "cpu_seconds": cpu, "tc": tc, "ner_full": 1.0}

    jobs = [job("base", None, 50.0), *(job("shipped", s, tc) for s, tc in ((0, 51.0), (1, 49.0), (2, 50.0)))]
    jobs += [job("candidate", s, tc) for s, tc in ((0, 52.0), (1, 50.2), (3, 99.0))]  # seed 3: the shipped has none
    jobs = [j | {"ner_10": j["tc"]} for j in jobs]
    summary = sweep.summarize(book, jobs, shipped="shipped")
    by_name = {entry["name"]: entry for entry in summary["recipes"]}
    versus = by_name["candidate"]["vs_shipped"]
    assert versus["seeds"] == [0, 1] and versus["tc"]["mean_delta"] == pytest.approx(1.1)
    assert versus["tc"]["se"] == pytest.approx(0.1) and not versus["tc"]["text"].endswith("≈")
    assert "vs_shipped" not in by_name["shipped"] and "other" not in by_name  # nothing run: no entry
    sweep.write_summary(summary, tmp_path / "out", "the command")
    assert "| candidate | 0 1 | +1.10 ± 0.10 |" in (tmp_path / "out" / "RESULTS.md").read_text()


def suite_results(test: dict[str, float], dev: dict[str, float]) -> dict:
    """A quick-protocol results.json in the suite's shape: one NER row and one run per `dataset@fraction[@seed]`
    (downstream seed 0 where not given)."""
    rows, runs = [{"family": "tc", "dataset": "T", "value": 60.0, "experiments": [59.0, 61.0]}], []
    for task, value in test.items():
        dataset, fraction, seed = [*task.split("@"), "0"][:3]
        key = {"dataset": dataset, "fraction": float(fraction), "seed": int(seed)}
        rows.append({"family": "ner", **key, "value": value})
        runs.append({**key, "test_f1": value, "dev_f1": dev[task]})
    return {"results": rows, "runs": runs}


def test_records_carry_the_dev_f1_a_choice_rests_on():
    results = suite_results({"a@1": 70.0, "b@1": 80.0, "a@0.1": 50.0}, {"a@1": 72.0, "b@1": 84.0, "a@0.1": 55.0})
    scores = sweep.scores_of(results, probes={})
    assert scores["ner_full"] == 75.0 and scores["ner_full_dev"] == 78.0 and scores["ner_10_dev"] == 55.0
    assert scores["ner_tasks_dev"] == {"a@1": 72.0, "b@1": 84.0, "a@0.1": 55.0}
    screen = sweep.scores_of(results, probes={"p": {"test_f1": 40.0}})  # NER full is the probe's: it has no dev
    assert screen["ner_full"] == 40.0 and "ner_full_dev" not in screen and screen["ner_10_dev"] == 55.0


def test_the_base_at_several_downstream_seeds_is_their_mean_and_carries_its_se(tmp_path):
    test = {"a@1@0": 70.0, "b@1@0": 80.0, "a@1@1": 72.0, "b@1@1": 80.0, "a@1@2": 74.0, "b@1@2": 80.0, "a@0.1@0": 50.0}
    scores = sweep.scores_of(suite_results(test, dev={task: value + 1 for task, value in test.items()}), probes={})
    assert scores["ner_full"] == pytest.approx(76.0)  # seed means 75, 76, 77
    assert scores["ner_full_downstream_se"] == pytest.approx(1 / 3**0.5)  # sd 1 over 3 seeds
    assert scores["ner_full_dev_downstream_se"] == pytest.approx(1 / 3**0.5) and scores["ner_full_dev"] == 77.0
    assert scores["ner_tasks"]["a@1"] == 72.0 and "ner_10_downstream_se" not in scores  # one seed: no spread
    book = load_recipes(recipe_file(tmp_path, "  - name: r\n"))
    cpu = {"train": 60.0, "quick": 60.0}
    base = {"recipe": "base", "seed": None, "model": "base", "cpu_seconds": cpu, "tc": 60.0, "ner_10": 50.0}
    runs = [
        {"recipe": "r", "seed": s, "model": "r", "cpu_seconds": cpu, "tc": 61.0, "ner_full": f, "ner_10": 51.0}
        for s, f in ((0, 77.0), (1, 78.0), (2, 79.0))
    ]
    summary = sweep.summarize(book, [base | scores, *runs], protocol="quick")
    full = summary["recipes"][0]["ner_full"]
    assert full["mean_delta"] == pytest.approx(2.0) and full["se"] == pytest.approx((1 / 3 + 1 / 3) ** 0.5, abs=1e-3)
    assert summary["base"]["ner_full_downstream_se"] == pytest.approx(0.577)
    sweep.write_summary(summary | {"quick": summary}, tmp_path / "out", "the command")
    assert "NER full (probe) 76.00 ± 0.58 (mean over downstream seeds)" in (tmp_path / "out" / "RESULTS.md").read_text()


def test_dev_differences_are_summarised_where_every_record_has_them(tmp_path):
    book = load_recipes(recipe_file(tmp_path, "  - name: shipped\n  - name: candidate\n  - name: old\n"))

    def job(recipe, seed, score, dev=True):
        record = {"recipe": recipe, "seed": seed, "model": recipe, "cpu_seconds": {"train": 60.0, "quick": 60.0}}
        record |= {"tc": score, "ner_full": score, "ner_10": score}
        return record | ({"ner_full_dev": score + 1, "ner_10_dev": score + 2} if dev else {})

    jobs = [job("base", None, 50.0), job("old", 0, 51.0, dev=False), job("old", 1, 52.0, dev=False)]
    jobs += [job("shipped", s, v) for s, v in ((0, 51.0), (1, 52.0))]
    jobs += [job("candidate", 0, 53.0), job("candidate", 1, 53.5, dev=False)]  # one seed without dev: no dev delta
    jobs += [job("candidate", 2, 54.0)]
    summary = sweep.summarize(book, jobs, shipped="shipped", protocol="quick")
    by_name = {entry["name"]: entry for entry in summary["recipes"]}
    assert summary["base"]["ner_full_dev"] == 51.0
    assert by_name["shipped"]["ner_full_dev"]["mean_delta"] == pytest.approx(1.5)  # (52 + 53) / 2 - 51
    assert "ner_full_dev" not in by_name["candidate"] and "ner_full_dev" not in by_name["old"]
    assert "ner_full_dev" not in by_name["candidate"]["vs_shipped"]
    sweep.write_summary(summary | {"quick": summary}, tmp_path / "out", "the command")
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    dev_table = text.split("NER dev F1")[-1]
    assert "| shipped | 0 1 | +1.50 ± 0.50 | +1.50 ± 0.50 | — | — |" in dev_table and "| old |" not in dev_table


def test_rescoring_adds_dev_to_records_from_their_folders_results(tmp_path):
    root = tmp_path / "jobs"
    for job in ("a-s0", "rebuilt-s0"):
        (root / job).mkdir(parents=True)
        record = {"recipe": job[:-3], "seed": 0, "cpu_seconds": {"train": 9.0, "quick": 9.0}, "ner_full": 1.0}
        (root / job / "DONE-quick.json").write_text(json.dumps(record))
    (root / "a-s0" / "quick").mkdir()
    results = suite_results({"c@1": 70.0, "c@0.1": 50.0}, {"c@1": 71.0, "c@0.1": 52.0})
    (root / "a-s0" / "quick" / "results.json").write_text(json.dumps(results))
    assert sweep.rescore_jobs(root, "quick") == ["a-s0"]  # rebuilt-s0 holds only its marker: kept as it is
    record = json.loads((root / "a-s0" / "DONE-quick.json").read_text())
    assert record["ner_full"] == 70.0 and record["ner_full_dev"] == 71.0 and record["cpu_seconds"]["train"] == 9.0
    assert "ner_full_dev" not in json.loads((root / "rebuilt-s0" / "DONE-quick.json").read_text())


def test_rescoring_names_a_damaged_results_file(tmp_path):
    job = tmp_path / "jobs" / "a-s0"
    (job / "quick").mkdir(parents=True)
    (job / "DONE-quick.json").write_text(json.dumps({"recipe": "a", "seed": 0}))
    (job / "quick" / "results.json").write_text('{"results": [')
    with pytest.raises(ValueError, match=r"a-s0/quick/results.json: not valid JSON"):
        sweep.rescore_jobs(tmp_path / "jobs", "quick")
