"""INT8 settings A/B on real documents: decisions, logits and speed against FP32.

The served demo model (all-MiniLM-L6-v2 + the kernel-docs `mean-pool` head) is exported
once in FP32 (ORT-fused graph); each INT8 setting of `quantize_dynamic` is applied to that
same fused graph, and every variant classifies the same kernel-docs test documents in
process (onnxruntime, as the portable encoder serves them). Reported per setting: argmax
agreement with FP32, max |delta logits|, accuracy against the true labels, windows/s, and
the machine's instruction sets (the integer kernel path depends on them: DESIGN.md).

    python bench_results/int8/measure_int8.py --data runs/kernel-docs/test \
        --documents 120 --max-chunks 8 --output bench_results/int8/<machine>.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "s8-full": {"per_channel": True, "reduce_range": False, "weight_type": "QInt8"},
    "s8-reduce-range": {"per_channel": True, "reduce_range": True, "weight_type": "QInt8"},
    "u8u8": {"per_channel": True, "reduce_range": False, "weight_type": "QUInt8"},
}


def main() -> None:
    from longdoc.export.pipeline import ExportSpec
    from longdoc.export.pipeline import run as run_export
    from longdoc.export.precision import quantize_int8

    from longdoc.contract import CHUNKER, ENCODER, ONNX_FILE
    from longdoc.data import read_dataset
    from longdoc.demo import HEAD_DIR, build_checkpoint
    from longdoc.machine import machine_info
    from longdoc.runtime import OnnxPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="labelled documents")
    parser.add_argument("--documents", type=int, default=120, help="the first N by id")
    parser.add_argument("--max-chunks", type=int, default=8, help="windows read per document")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all)")
    parser.add_argument("--output", type=Path, required=True, help="the JSON report")
    args = parser.parse_args()

    examples = read_dataset(args.data)[: args.documents]
    texts = [e.text for e in examples]
    with tempfile.TemporaryDirectory(prefix="int8-ab-") as tmp:
        tmp = Path(tmp)
        checkpoint = build_checkpoint(HEAD_DIR, tmp / "checkpoint")
        chunking = {"max_chunks": args.max_chunks, "overflow": "head_tail"}
        fp32 = tmp / "fp32"
        spec = ExportSpec(output=fp32, checkpoint=checkpoint, chunking=chunking, skip_parity=True)
        run_export(spec, log=lambda *_: None)
        repos = {"fp32": fp32}
        for name, settings in SETTINGS.items():
            repo = tmp / name
            shutil.copytree(fp32, repo)
            quantize_int8(
                fp32 / ENCODER / "1" / ONNX_FILE, repo / ENCODER / "1" / ONNX_FILE, settings
            )
            repos[name] = repo
        results: dict = {}
        for name, repo in repos.items():
            pipeline = OnnxPipeline(repo, threads=args.threads or None)
            started = time.perf_counter()
            out = pipeline.classify_batched(texts)
            seconds = time.perf_counter() - started
            windows = sum(len(r.chunk_logits) for r in out)
            logits = np.stack([r.logits for r in out])
            results[name] = {"logits": logits, "windows": windows, "seconds": seconds}
        labels = OnnxPipeline(fp32).labels
        assert (fp32 / CHUNKER).is_dir()
    truth = np.array([labels.index(e.label) for e in examples])
    ref = results["fp32"]["logits"]
    report = {
        "machine": machine_info(),
        "documents": len(texts),
        "max_chunks": args.max_chunks,
        "windows": results["fp32"]["windows"],
        "variants": {},
    }
    for name, r in results.items():
        row = {
            "settings": SETTINGS.get(name, "fp32 (fused)"),
            "argmax_agreement_with_fp32": float((r["logits"].argmax(1) == ref.argmax(1)).mean()),
            "max_abs_delta_logits": float(np.abs(r["logits"] - ref).max()),
            "accuracy": float((r["logits"].argmax(1) == truth).mean()),
            "windows_per_s": round(r["windows"] / r["seconds"], 2),
            "speedup_vs_fp32": round(results["fp32"]["seconds"] / r["seconds"], 2),
        }
        report["variants"][name] = row
        print(name, json.dumps(row))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
