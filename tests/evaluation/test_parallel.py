import json

import pytest

from mtpf.data.roots import DataSources
from mtpf.evaluation.parallel import TC_TASK_COST, EvalJob, Workers, deal, evaluate_in_parallel, pending_jobs
from mtpf.evaluation.suite import SuiteRun
from mtpf.evaluation.suites import SUITES, suite_settings
from mtpf.models import model_hash
from mtpf.results import ResultRecord, load_results
from tests.conftest import REPO_ROOT, SHARED_DIR, TINY, eval_command, run_command
from tests.evaluation.test_suite import smoke_result_keys

TC_ROOT = SHARED_DIR / "data" / "tc"


def test_pending_jobs_cut_by_dataset_and_skip_what_is_done():
    settings = suite_settings(
        "quick", ner_datasets=["conll2003", "mine=/data/mine"], tc_tasks=["Emo."], fractions=[1.0, 0.1]
    )
    done = {
        ("a", "h1", "ner", "conll2003", 1.0, 0),
        ("a", "h1", "ner", "conll2003", 0.1, 0),
        ("a", "h1", "ner", "mine", 1.0, 0),
        ("a", "h1", "tc", "EmotionClassification", 1.0, 0),
        ("b", "OLD", "ner", "conll2003", 1.0, 0),  # other weights under the label: not done
    }

    def has(model, config_hash, key) -> bool:
        return (model, config_hash, *key) in done

    jobs = pending_jobs(["a=/m/a", "b=/m/b"], {"a": "h1", "b": "h2"}, settings, has)
    assert jobs == [
        EvalJob("a=/m/a", "mine=/data/mine", 1.0),
        EvalJob("b=/m/b", "conll2003", 2.0),
        EvalJob("b=/m/b", "mine=/data/mine", 2.0),
        EvalJob("b=/m/b", None, TC_TASK_COST),
    ]
    hub = suite_settings("quick", ner_datasets=["hf://acme/ner-set:en"], tc_tasks=[])

    def has_hub_set(model, config_hash, key) -> bool:
        return key.dataset == "ner-set-en"

    assert pending_jobs(["a=/m/a"], {"a": "h1"}, hub, has_hub_set) == []  # one naming rule
    assert pending_jobs(["b=/m/b"], {"b": "h2"}, settings, has, families=("tc",)) == [jobs[3]]


def test_deal_splits_a_model_across_workers_longest_first():
    # the shape of the MiniLM-L6 sweep's tail: one dataset left for one model, three models with five each
    jobs = [EvalJob("m0", "crossner", 1.0)] + [
        EvalJob(model, dataset, 2.0) for model in ("m1", "m2", "m3") for dataset in "abcde"
    ]
    shares = deal(jobs, 2)
    loads = [sum(job.cost for job in share) for share in shares]
    assert sorted(loads) == [15.0, 16.0]
    assert sorted(str(job) for share in shares for job in share) == sorted(map(str, jobs))
    assert all(share == sorted(share, key=jobs.index) for share in shares)  # each worker keeps the sweep order
    assert len(deal(jobs[:1], 4)) == 1  # no idle workers


def test_parallel_cli_matches_the_sequential_suite_then_resumes(smoke_eval, tmp_path):
    output = tmp_path / "eval"
    sequential, models = smoke_eval
    run_command([*eval_command(output, *models), "--workers", "2"], cwd=REPO_ROOT)
    payload = json.loads((output / "results.json").read_text())
    assert {(r["model"], r["family"], r["dataset"]) for r in payload["results"]} == smoke_result_keys(TINY, "tpl")
    scores = {(r.model, r.dataset): (r.value, r.config_hash) for r in load_results(output / "results.json")}
    expected = {(r.model, r.dataset): (r.value, r.config_hash) for r in load_results(sequential / "results.json")}
    assert scores == expected  # the same numbers, not just the same keys
    assert [m["model"] for m in payload["models"]] == [TINY, "tpl"]  # the order given, not the finishing order
    assert payload["suite"]["command"].endswith("--workers 2") and payload["suite"]["previous_commands"] == []
    workers = output / "workers"
    assert sorted(p.name for p in workers.iterdir()) == ["worker-0.log", "worker-1.log"]  # folders merged, removed
    logs = (workers / "worker-0.log").read_text() + (workers / "worker-1.log").read_text()
    assert "-m mtpf.evaluation.parallel" in logs and "tpl: NER crossner done" in logs  # jobs as data, not flags
    result = run_command([*eval_command(output, *models), "--workers", "2"], cwd=REPO_ROOT)
    assert "every score is already there" in result.stderr and len(load_results(output / "results.json")) == 6


def test_parallel_refuses_other_weights_under_a_label_or_another_protocol_before_any_work(tmp_path):
    run = SuiteRun(SUITES["smoke"], tmp_path)
    run.records.append(ResultRecord(TINY, "ner", "crossner", "test", "f1", 1.0, config_hash="not-these-weights"))
    run.save()
    with pytest.raises(
        ValueError,
        match=rf"from other weights \(config hash not-these-weights, now "
        rf"{model_hash(TINY)}\)",
    ):
        evaluate_in_parallel([TINY], SUITES["smoke"], tmp_path, Workers(2, "mtpf-eval"))
    with pytest.raises(ValueError, match="its ner protocol has epochs=1, this run epochs=3"):
        evaluate_in_parallel([TINY], suite_settings("smoke", ner={"epochs": 3}), tmp_path, Workers(2, "mtpf-eval"))


def test_parallel_plans_no_job_for_scores_that_are_there_or_cannot_be_made_here(tmp_path, caplog):
    run = SuiteRun(SUITES["smoke"], tmp_path)
    for family, dataset in [
        ("ner", "crossner"),
        ("tc", "EmotionClassification"),
        ("tc", "FinancialPhrasebankClassification"),
    ]:
        run.records.append(ResultRecord(TINY, family, dataset, "test", "f1", 1.0, config_hash=model_hash(TINY)))
    run.save()
    settings = suite_settings("smoke", tc_tasks=["Emo.", "FPB", "Patent"])  # Patent: no local copy, Hub offline
    with caplog.at_level("INFO"):
        evaluate_in_parallel([TINY], settings, tmp_path, Workers(2, "mtpf-eval", sources=DataSources(tc_root=TC_ROOT)))
    assert "every score is already there" in caplog.text and not (tmp_path / "workers").exists()
