"""Does the quick protocol's single downstream seed bias the NER differences? The base and the shipped recipe's
releases (teacher rebuilt on the ninth session's machine) scored by the quick protocol's LoRA NER at more than one
downstream seed (the LoRA's and head's initialisation and the data order):

    base        downstream seed 0: the sweep's first record (/work/quality/base-backup-10th/quick); 1 and 2 at
                full data: /work/quality/base-seeds (ninth session), at 10 %: /work/quality/ds-pairs/base-10
                (/work/quality/ds-pairs.sh); all three are now merged in the sweep's /work/quality/jobs/base/quick
    shipped s   pre-finetuning seed s at downstream seed 0: /work/quality/measure{,-s1,-s2}/quick (the sweep's
                design); at downstream seed s (s = 1, 2): /work/quality/ds-pairs/shipped-s<s>

Two designs for the difference to the base, over pre-finetuning seeds 0 1 2:
    A (the sweep's)  d_s = R_s(ds 0) - B(ds 0): every seed shares the base's one downstream draw;
    B (paired)       d_s = R_s(ds s) - B(ds s): the downstream draw varies with the seed, so the SE covers it;
    A' (the sweep's since the tenth session)  d_s = R_s(ds 0) - mean of B(ds 0, 1, 2), that mean's SE added to the
                     paired one in quadrature.
and, per seed s = 1 2, whether moving the downstream seed moves the release and the base alike
(R_s(ds s) - R_s(ds 0) against B(ds s) - B(ds 0)): alike means design A's shared draw cancels; apart means A's SE
misses the base's draw.

    python results/quality/downstream-seeds/analyse.py > results/quality/downstream-seeds/RESULTS.md
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mtpf.quality.stats import paired_delta, standard_error

Q = Path("/work/quality")
FAMILIES = {"ner_full": 1.0, "ner_10": 0.1}


def runs(path: Path) -> dict[tuple[str, float, int], dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {(r["dataset"], r["fraction"], r["seed"]): r for r in data["runs"] if "fraction" in r}  # NER runs only


def family(found: dict, fraction: float, seed: int, key: str = "test_f1") -> float:
    values = [r[key] for (_, f, s), r in found.items() if f == fraction and s == seed]
    if len(values) != 2:
        raise ValueError(f"expected 2 NER datasets at fraction {fraction} seed {seed}, found {len(values)}")
    return statistics.fmean(values)


def main() -> None:
    base = runs(Q / "jobs/base/quick/results.json")  # downstream seeds 0 1 2 (merged)
    releases = {0: runs(Q / "measure/quick/results.json")}
    for seed in (1, 2):
        at_seed = runs(Q / f"ds-pairs/shipped-s{seed}/results.json")
        releases[seed] = runs(Q / f"measure-s{seed}/quick/results.json") | at_seed
    print("# The quick protocol's downstream seed: the base and the shipped recipe at more than one\n")
    print("Made by `python results/quality/downstream-seeds/analyse.py` (its docstring says what each folder holds).")
    print()
    for key, label in (("test_f1", "test"), ("dev_f1", "dev")):
        print(f"## {label} F1 (mean of conll2003 and mit_restaurant)\n")
        print(
            "| family | base ds 0 / 1 / 2 (std) | A: R_s(ds 0) - B(ds 0) | B: R_s(ds s) - B(ds s) | "
            "A': R_s(ds 0) - mean B | seed 1: R move / B move | seed 2: R move / B move |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, fraction in FAMILIES.items():
            b = {s: family(base, fraction, s, key) for s in (0, 1, 2)}
            r0 = {s: family(releases[s], fraction, 0, key) for s in (0, 1, 2)}
            rs = {s: family(releases[s], fraction, s, key) for s in (0, 1, 2)}
            design_a = paired_delta(r0, b[0])
            design_b = paired_delta(rs, b)
            base_se = standard_error(list(b.values()))
            design_a2 = paired_delta(r0, statistics.fmean(b.values())).with_reference_se(base_se)
            moves = [f"{rs[s] - r0[s]:+.2f} / {b[s] - b[0]:+.2f}" for s in (1, 2)]
            spread = f"{b[0]:.2f} / {b[1]:.2f} / {b[2]:.2f} ({statistics.stdev(b.values()):.2f})"
            designs = " | ".join(d.describe() for d in (design_a, design_b, design_a2))
            print(f"| {name} | {spread} | {designs} | {' | '.join(moves)} |")
        print()


if __name__ == "__main__":
    main()
