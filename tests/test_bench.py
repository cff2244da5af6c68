"""The benchmark scripts stay runnable (tiny settings; their real results live in bench/RESULTS.md)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO_ROOT, run_command


def run_bench(script: str, *args: str, tmp_path) -> dict:
    output = tmp_path / "out.json"
    run_command([sys.executable, str(REPO_ROOT / "bench" / script), *args, "--output", str(output)], REPO_ROOT)
    return json.loads(output.read_text())


def test_contrastive_scaling(tmp_path):
    report = run_bench(
        "contrastive_scaling.py",
        "--backbone",
        "offline:tiny-bert",
        "--sizes",
        "8",
        "16",
        "--mini",
        "4",
        tmp_path=tmp_path,
    )
    runs = report["results"]["runs"]
    assert [(r["batch"], r["grad_cache_mini_batch"]) for r in runs] == [(8, 0), (8, 4), (16, 0), (16, 4)]
    assert all(r["peak_rss_gb"] > 0 and r["ms_per_pair"] > 0 and r["gflops_per_s"] > 0 for r in runs)
    assert report["results"]["matmul_gflops"]["fp32"] > 0 and "native" in report["results"]["cpu"]


def test_serving(tmp_path):
    report = run_bench("serving.py", "--backbone", "offline:tiny-bert", "--repeats", "1", tmp_path=tmp_path)
    assert set(report["results"]["batch_32"]) == {
        "backbone",
        "active_slot",
        "active_slot_without_peft_wrapper",
        "active_slot_unmerged",
        "merged_slot",
        "alternating_slots",
        "mixed_path_one_slot",
        "mixed_batch_4_slots",
        "one_pass_per_slot",
    }
    assert report["results"]["batch_1"]["set_adapter_ms"] > 0
    assert report["results"]["batch_1"]["cold_cache"]["vs_backbone"] > 0


@pytest.mark.parametrize("teacher", ["offline:tiny-bert"])
def test_pseudo_label_throughput(tmp_path, teacher):
    report = run_bench(
        "pseudo_label_throughput.py",
        "--teacher",
        teacher,
        "--sentences",
        "100",
        "--clusters",
        "8",
        "--repeats",
        "1",
        tmp_path=tmp_path,
    )
    (run,) = report["results"]["runs"]
    assert 0 < run["teacher_seconds"] < run["seconds"] and run["kmeans_seconds"] > 0
    assert report["results"]["kmeans_overhead"] == run["kmeans_overhead"] > 0


def test_quality_per_cpu_hour(tmp_path):
    report = run_bench(
        "quality_per_cpu_hour.py",
        *("--config", "configs/smoke.yaml", "--minutes", "0.05", "--suite", "smoke", "--workdir", str(tmp_path / "w")),
        tmp_path=tmp_path,
    )
    runs = {run["mode"]: run for run in report["results"]["runs"]}
    assert set(runs) == {"pf_tc", "mtpf_tpl"} and all(run["steps"] >= 1 for run in runs.values())
    assert report["results"]["tasks"] == ["Emo.", "FPB"]
    for run in runs.values():
        assert abs(run["gain"] - (run["tc_average"] - report["results"]["base_tc_average"])) <= 0.011


def test_mode_step_time(tmp_path):
    report = run_bench("mode_step_time.py", "configs/smoke.yaml", "--steps", "1", "--repeats", "1", tmp_path=tmp_path)
    variants = {r["variant"]: r for r in report["results"]}
    assert "mtpf_tpl (PEFT LoRA, unfused)" in variants and "pf_tc (length chunks 16)" in variants
    assert all(r["seconds_per_step"] > 0 and r["real_tokens_per_s"] > 0 for r in variants.values())
    for ratio in ("tpl_step_overhead", "fused_vs_unfused_tpl_step", "tc_length_chunks_vs_plain_step"):
        assert report[ratio] > 0 and len(report[f"{ratio}_per_repeat"]) == 1


def test_padding(tmp_path):
    report = run_bench(
        "padding.py", "configs/smoke.yaml", "--steps", "5", "--buckets", "2", "--tc-chunks", "4", tmp_path=tmp_path
    )
    results = report["results"]
    assert set(results) == {"ner", "ner_bucketed", "tc", "tc_length_chunks_4"}
    assert results["tc_length_chunks_4"]["real_tokens"] == results["tc"]["real_tokens"]
    assert results["tc_length_chunks_4"]["padding_share"] < results["tc"]["padding_share"]


def test_bf16_breakdown(tmp_path):
    from mtpf.training.precision import cpu_bf16_capability

    if not cpu_bf16_capability()["native"]:
        pytest.skip("no native bf16 on this CPU: the script refuses to run")
    report = run_bench("bf16_breakdown.py", "configs/smoke.yaml", "--modes", "pf_tc", "--steps", "1", tmp_path=tmp_path)
    mode = report["results"]["modes"]["pf_tc"]
    for precision in ("fp32", "bf16"):
        parts = mode[precision]
        assert parts["matmul"] > 0
        assert abs(parts["matmul"] + parts.get("cast_copy", 0) + parts["other"] - parts["total"]) < 1e-3
    assert mode["speedup"] > 0 and mode["bound_if_only_matmuls_sped_up"] > 0


def test_slot_switch(tmp_path):
    report = run_bench("slot_switch.py", "--backbone", "offline:tiny-bert", "--repeats", "3", tmp_path=tmp_path)
    assert report["results"]["ms_per_step_both_switches"] > 0 and report["results"]["parameters"] > 0


def test_serve_locust(tmp_path, classifier_app):
    """mtpf serve (the backbone and an app on /v1/embeddings and /v1/classify) and the sentence-transformers baseline
    on the same weights, under locust, one round."""
    release, classifier = classifier_app
    report = run_bench(
        "serve_locust.py",
        "--release",
        str(release),
        "--app",
        str(classifier),
        "--model_dir",
        str(release / "backbone"),
        "--rounds",
        "1",
        "--seconds",
        "3",
        "--clients",
        "2",
        tmp_path=tmp_path,
    )
    results = report["results"]
    assert set(results["min_cosine_to_sentence_transformers"]) == {"mtpf torch", "sentence-transformers + FastAPI"}
    assert min(results["min_cosine_to_sentence_transformers"].values()) > 0.9999  # both serve the same vectors
    assert set(results["runs"]) == {
        "mtpf torch",
        "mtpf torch, app embeddings",
        "mtpf torch, app classify",
        "sentence-transformers + FastAPI",
    }
    for runs in results["runs"].values():
        for (first,) in runs.values():
            assert first["requests"] > 0 and first["failures"] == 0 and first["p99_ms"] >= first["p50_ms"] > 0
    ratios = results["ratios"]
    assert (
        ratios["mtpf best over peer"]["sentence-transformers + FastAPI, requests_per_s, 1 text per request"]["median"]
        > 0
    )
    assert ratios["mtpf torch, app classify: backbone rate over the app's"]["32 texts per request"]["median"] > 0


def test_serve_budget(tmp_path, slotted_release):
    """Every budget of the sweep embeds every row (real tokens per second, > 0), per dataset."""
    report = run_bench("serve_budget.py", "--release", str(slotted_release), "--rounds", "1", tmp_path=tmp_path)
    results = report["results"]
    assert set(results) == {"torch, banking77", "torch, ag_news", "torch, imdb"}
    for entry in results.values():
        assert entry["rows"] > 0 and set(entry["tokens_per_s"]) == {"256", "512", "1024", "2048", "8192"}
        assert min(entry["tokens_per_s"].values()) > 0
