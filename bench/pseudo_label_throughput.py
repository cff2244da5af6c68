"""Pseudo-labelling throughput: teacher word embeddings alone vs the whole pipeline (embeddings + k-means fit
+ assignment), words per second and peak RSS, on the offline Wikipedia corpus.

    python bench/pseudo_label_throughput.py [--teacher outputs/teacher-minilm-l6] [--sentences 2000] [--clusters 200]

Each variant runs in its own process (own peak RSS).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from bench.common import peak_rss_gb, write_report
from mtpf.data.roots import UNLABELED_DATA

CORPUS = f"{UNLABELED_DATA}/wikipedia_en_sentences_altlex.txt"


def one_run(variant: str, teacher: str, sentences: int, clusters: int) -> dict:
    from mtpf.data.corpus import read_corpus
    from mtpf.pseudo_labels import PseudoLabelSettings, cluster_teacher_embeddings, embed_words, load_teacher

    corpus = read_corpus([CORPUS], sentences)
    words = sum(map(len, corpus))
    settings = PseudoLabelSettings(teacher=teacher, corpus=[CORPUS], num_clusters=clusters, max_sentences=sentences)
    start = time.perf_counter()
    if variant == "teacher_only":
        model, tokenizer = load_teacher(teacher)
        for offset in range(0, len(corpus), settings.batch_size):
            embed_words(model, tokenizer, corpus[offset : offset + settings.batch_size], settings.max_length)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            cluster_teacher_embeddings(corpus, settings, Path(workdir))
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "sentences": len(corpus),
        "words": words,
        "seconds": round(seconds, 2),
        "words_per_second": round(words / seconds, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="outputs/teacher-minilm-l6")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench/results/pseudo_label_throughput.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.teacher, args.sentences, args.clusters)))
        return
    results = []
    for variant in ("teacher_only", "teacher_plus_kmeans"):
        command = [
            sys.executable,
            __file__,
            "--one",
            variant,
            "--teacher",
            args.teacher,
            "--sentences",
            str(args.sentences),
            "--clusters",
            str(args.clusters),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    overhead = results[1]["seconds"] / results[0]["seconds"] - 1
    print(f"k-means adds {overhead:.1%} over teacher inference alone")
    write_report(args.output, " ".join(["python", *sys.argv]), {"runs": results, "kmeans_overhead": round(overhead, 4)})


if __name__ == "__main__":
    main()
