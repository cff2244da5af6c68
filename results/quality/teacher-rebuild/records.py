"""Sweep records for the shipped recipe retrained with the teacher rebuilt on the ninth session's machine.

`/work/quality/measure` (seed 0: the main job's CPU measurement, `train_mtpf.py configs/demo.yaml`) and
`/work/quality/measure-s1`, `-s2` (`/work/quality/rebuilt-seed.sh SEED`, the same call at seeds 1 and 2) each hold a
release and its quick-protocol results (`quick/results.json`, made by `mtpf.quality.sweep.quick`). This writes
one `DONE-quick.json` per seed in the sweep's record format under ROOT/nergrad0-nerall-nerlr1e-3-ner2x-cobase-s<seed>,
beside copies of the base's and the candidates' records (and of rule k's seeds 3 4, where finished), so that
`scripts/quality_sweep.py --summarize` pairs them:

    python results/quality/teacher-rebuild/records.py /work/quality/jobs /work/quality/jobs-rebuilt
    python scripts/quality_sweep.py --root /work/quality/jobs-rebuilt --summarize results/quality/teacher-rebuild \
        --shipped nergrad0-nerall-nerlr1e-3-ner2x-cobase

CPU is left unknown in these records (0, which the summary reads as not on record): seed 0's training was timed
by `/usr/bin/time -v` (941 CPU-s, `results/quality/README.md`), the others and the quick protocol were not.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mtpf.io import atomic_write_text
from mtpf.quality.recipes import load_recipes
from mtpf.quality.sweep import job_record, saved_scores

SHIPPED = "nergrad0-nerall-nerlr1e-3-ner2x-cobase"
# recipes trained with the rebuilt teacher by the sweep itself (ninth and tenth sessions), copied beside them
CANDIDATES = ("nergrad0-nerall-nerlr2e-3-ner2x-cobase", "nergrad0-nerall-nerlr1e-3-ner2x-cobase-pairtemp2")
FOLDERS = {0: Path("/work/quality/measure"), 1: Path("/work/quality/measure-s1"), 2: Path("/work/quality/measure-s2")}
# rule k (tenth session): the shipped recipe and -pairtemp2 at seeds 3 4, trained by the sweep with the rebuilt teacher
FOLLOW_UP = Path("/work/quality/jobs-seeds34")


def main(jobs: Path, target: Path) -> None:
    levers = load_recipes("configs/quality/recipes.yaml").recipes[SHIPPED].levers()
    (target / "base").mkdir(parents=True, exist_ok=True)
    for marker in ("DONE.json", "DONE-quick.json"):
        shutil.copy(jobs / "base" / marker, target / "base" / marker)
    for candidate in CANDIDATES:
        for seed in range(3):
            source = jobs / f"{candidate}-s{seed}" / "DONE-quick.json"
            (target / source.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / source.parent.name / source.name)
    for marker in sorted(FOLLOW_UP.glob("*-s[34]/DONE-quick.json")):  # rule k's seeds 3 4 (both recipes), once done
        (target / marker.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(marker, target / marker.parent.name / marker.name)
    for seed, folder in FOLDERS.items():
        cpu = {"train": 0.0, "quick": 0.0}  # not timed by the sweep: unknown, not free
        job = {"recipe": SHIPPED, "seed": seed, "model": str(folder / "release"), "levers": levers}
        record = job_record(job, saved_scores(folder, "quick"), cpu, "quick")
        record["teacher"] = "/work/quality/teacher-minilm-l6 (rebuilt on the ninth session's machine)"
        out = target / f"{SHIPPED}-s{seed}"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "DONE-quick.json", json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
