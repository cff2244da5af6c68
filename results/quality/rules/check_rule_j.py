"""Rule j's five conditions (and rule k's, the same on seeds 0-4) for `-cobase-pairtemp2` against the shipped recipe,
both trained with the rebuilt teacher, from the records under a job root (`teacher-rebuild/records.py` makes it):

    python results/quality/rules/check_rule_j.py /work/quality/jobs-rebuilt
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from mtpf.quality.stats import paired_delta

SHIPPED = "nergrad0-nerall-nerlr1e-3-ner2x-cobase"
CANDIDATE = f"{SHIPPED}-pairtemp2"


def records(root: Path, recipe: str) -> dict[int, dict]:
    paths = root.glob(f"{recipe}-s[0-9]/DONE-quick.json")
    return {int(path.parent.name[-1]): json.loads(path.read_text(encoding="utf-8")) for path in paths}


def main(root: Path) -> None:
    base = json.loads((root / "base" / "DONE-quick.json").read_text(encoding="utf-8"))
    shipped, candidate = records(root, SHIPPED), records(root, CANDIDATE)
    seeds = sorted(set(shipped) & set(candidate))
    print(f"seeds both have: {seeds}")

    def versus(family: str):
        return paired_delta({s: candidate[s][family] for s in seeds}, {s: shipped[s][family] for s in seeds})

    def against_base(family: str):
        delta = paired_delta({s: candidate[s][family] for s in seeds}, base[family])
        return delta.with_reference_se(base.get(f"{family}_downstream_se"))

    tc = versus("tc")
    print(f"per seed TC vs shipped: {[round(candidate[s]['tc'] - shipped[s]['tc'], 2) for s in seeds]}")
    print(
        f"1. TC vs shipped {tc.describe()} (beyond 2 SE and positive: {tc.significant and tc.mean_delta > 0}); "
        f"TC vs base {against_base('tc').describe()}"
    )
    tasks = candidate[seeds[0]]["tc_tasks"]
    positive = sum(
        statistics.fmean(candidate[s]["tc_tasks"][t] - shipped[s]["tc_tasks"][t] for s in seeds) > 0 for t in tasks
    )
    print(f"2. TC tasks with a positive paired mean: {positive} of {len(tasks)}")
    for family in ("ner_full", "ner_10", "ner_full_dev"):
        delta = versus(family)
        below = delta.significant and delta.mean_delta < 0
        print(f"3. {family} vs shipped {delta.describe()} (below beyond 2 SE: {below})")
    ner_10 = against_base("ner_10")
    print(f"4. NER 10 % vs base {ner_10.describe()} (mean - 2 SE = {ner_10.mean_delta - 2 * ner_10.se:+.2f})")
    print(f"   NER full vs base {against_base('ner_full').describe()}")
    cpu = {s: candidate[s]["cpu_seconds"]["train"] for s in seeds}
    print(f"5. training CPU s, candidate {cpu}; shipped {[shipped[s]['cpu_seconds']['train'] for s in seeds]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
