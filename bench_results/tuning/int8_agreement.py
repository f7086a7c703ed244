"""INT8 vs FP32 decisions (in-process onnxruntime: the served decisions equal these, see the
bench's served_vs_ort agreement) on a larger benchmark corpus than a served run can afford.

    python bench_results/tuning/int8_agreement.py N FP32_REPO INT8_REPO OUT.json
"""

import json
import sys
import time

import numpy as np
from longdoc.bench.workload import build_corpus, load_chunking

from longdoc.runtime import OnnxPipeline

n = int(sys.argv[1])
repos = {"fp32": sys.argv[2], "int8": sys.argv[3]}
tok, cfg = load_chunking(repos["fp32"])
docs = build_corpus(n, 1, tok, cfg)  # seed 1: not the benchmark's corpus
texts = [d.text for d in docs]
res = {}
for name in ("fp32", "int8"):
    p = OnnxPipeline(repos[name], max_batch=8)
    t = time.perf_counter()
    out = []
    for i in range(0, n, 16):
        out += p.classify_batched(texts[i : i + 16])
    res[name] = out
    print(name, time.perf_counter() - t, flush=True)
a = [int(np.argmax(r.logits)) for r in res["fp32"]]
b = [int(np.argmax(r.logits)) for r in res["int8"]]
prob_delta = [
    float(np.abs(x.probabilities - y.probabilities).max()) for x, y in zip(res["fp32"], res["int8"])
]
margin = [float(np.sort(x.probabilities)[-1] - np.sort(x.probabilities)[-2]) for x in res["fp32"]]
dis = [i for i in range(n) if a[i] != b[i]]
out = {
    "docs": n,
    "seed": 1,
    "agree": n - len(dis),
    "rate": 1 - len(dis) / n,
    "max_prob_delta": max(prob_delta),
    "mean_prob_delta": float(np.mean(prob_delta)),
    "disagreements": [
        {
            "doc": i,
            "chunks": docs[i].num_chunks,
            "fp32_margin": margin[i],
            "prob_delta": prob_delta[i],
        }
        for i in dis
    ],
    "median_fp32_margin": float(np.median(margin)),
}
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[4], "w"), indent=1)
