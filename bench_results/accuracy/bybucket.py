"""Per-length-bucket accuracy and McNemar between two ACCURACY.md rows, seed by seed.

.venv/bin/python bench_results/accuracy/bybucket.py runs/accuracy mean-pool truncation
"""

import json
import sys

import numpy as np

from longdoc.metrics import mcnemar

BUCKETS = (("<=512", 0, 512), ("513-2048", 513, 2048), (">2048", 2049, 10**9))


def main() -> None:
    root, a, b = sys.argv[1:4]
    for seed in (0, 1, 2):
        try:
            with open(f"{root}/{a}/seed{seed}/test/report.json") as fa:
                ra = json.load(fa)
            with open(f"{root}/{b}/seed{seed}/test/report.json") as fb:
                rb = json.load(fb)
        except FileNotFoundError:
            continue
        pa, pb = ra["predictions"], rb["predictions"]
        line = []
        for name, lo, hi in BUCKETS:
            keep = [i for i, p in enumerate(pa) if lo <= p["num_tokens"] <= hi]
            ca = [pa[i]["label"] == pa[i]["predicted"] for i in keep]
            cb = [pb[i]["label"] == pb[i]["predicted"] for i in keep]
            m = mcnemar(ca, cb)
            line.append(
                f"{name} (n={len(keep)}): {np.mean(ca):.3f} vs {np.mean(cb):.3f}, "
                f"McNemar {m['only_a_correct']}:{m['only_b_correct']} p={m['p_value']:.3g}"
            )
        print(f"seed {seed}: " + "; ".join(line))


if __name__ == "__main__":
    main()
