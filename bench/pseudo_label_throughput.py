"""Pseudo-labelling throughput: the whole pipeline (teacher word embeddings + k-means fit + assignment), words per
second and peak RSS on the offline Wikipedia corpus, and what share of it the k-means part adds over teacher inference.

    python bench/pseudo_label_throughput.py [--teacher outputs/teacher-minilm-l6] [--sentences 2000] [--clusters 200]
                                            [--repeats 3]

The k-means share is measured inside each pipeline run: the teacher's part (loading it, `embed_words` on every
batch) is timed as it happens, and everything else the pipeline does (the float16 memory map, `partial_fit` on
the stream, the second pass that assigns every word, the per-sentence split) is the k-means part. Both sides of the
ratio thus come from the same process, interleaved batch by batch, so the machine's drift between processes
(20-40 % here) does not enter it. Each repeat runs in its own process (own peak RSS); the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import peak_rss_gb, write_report

from mtpf.data.roots import UNLABELED_DATA

CORPUS = f"{UNLABELED_DATA}/wikipedia_en_sentences_altlex.txt"


class Stopwatch:
    """Wraps a function and adds up the seconds spent inside it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def one_run(teacher: str, sentences: int, clusters: int) -> dict:
    from mtpf import pseudo_labels
    from mtpf.data.corpus import read_corpus

    corpus = read_corpus([CORPUS], sentences)
    words = sum(map(len, corpus))
    settings = pseudo_labels.PseudoLabelSettings(
        teacher=teacher, corpus=[CORPUS], num_clusters=clusters, max_sentences=sentences
    )
    loading = pseudo_labels.load_teacher = Stopwatch(pseudo_labels.load_teacher)
    inference = pseudo_labels.embed_words = Stopwatch(pseudo_labels.embed_words)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        pseudo_labels.cluster_teacher_embeddings(corpus, settings, Path(workdir))
    seconds = time.perf_counter() - start
    teacher_seconds = loading.seconds + inference.seconds
    return {
        "sentences": len(corpus),
        "words": words,
        "seconds": round(seconds, 2),
        "teacher_seconds": round(teacher_seconds, 2),
        "kmeans_seconds": round(seconds - teacher_seconds, 2),
        "kmeans_overhead": round((seconds - teacher_seconds) / teacher_seconds, 4),
        "words_per_second": round(words / seconds, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="outputs/teacher-minilm-l6")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench/results/pseudo_label_throughput.json")
    args = parser.parse_args()
    settings = ["--teacher", args.teacher, "--sentences", str(args.sentences), "--clusters", str(args.clusters)]
    if args.one:
        print(json.dumps(one_run(args.teacher, args.sentences, args.clusters)))
        return
    runs = []
    for _ in range(args.repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--one", *settings], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    overhead = statistics.median(run["kmeans_overhead"] for run in runs)
    print(f"k-means adds {overhead:.1%} over teacher inference (median of {len(runs)})")
    write_report(args.output, " ".join(["python", *sys.argv]), {"runs": runs, "kmeans_overhead": overhead})


if __name__ == "__main__":
    main()
