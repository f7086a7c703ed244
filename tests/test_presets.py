"""`longdoc.presets`: the shared numbers (preset sizes, FLOP formula, GPU ceiling, parity
bounds) load with the standard library alone, agree with DESIGN.md, and are the ones the
package uses (no second copy to drift)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc import contract, presets

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "torch", "onnxruntime", "onnx", "transformers", "tokenizers", "tritonclient")
# the modules gpu_checks imports before it knows what is installed
LIGHT_MODULES = ("presets", "machine")


@pytest.mark.parametrize("name", LIGHT_MODULES)
def test_module_imports_only_the_standard_library(name):
    tree = ast.parse((ROOT / "longdoc" / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_importing_them_loads_nothing_heavy():
    """From the repository root, as gpu_checks runs: `longdoc` and these modules alone."""
    modules = ", ".join(f"longdoc.{name}" for name in LIGHT_MODULES)
    probe = (
        f"import json, sys, {modules}\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == []


def test_window_flops_and_the_gpu_ceiling_match_design():
    # DESIGN.md: a 512-token MiniLM window is about 13 GFLOP, a bert-large one about 335
    assert presets.window_flops(6, 384, 1536, 512) / 1e9 == pytest.approx(13.3, abs=0.1)
    assert presets.preset_window_flops("bert-large-uncased") / 1e9 == pytest.approx(335, abs=1)
    # ~790 TFLOP/s over 335 GFLOP: ~2,350 chunks/s per GPU; TensorRT's ~65%: ~1,500
    at_peak = presets.GPU_FP16_TFLOPS * 1e12 / presets.preset_window_flops("bert-large-uncased")
    assert at_peak == pytest.approx(presets.GPU_CEILING_CHUNKS_PER_S, abs=50)
    assert presets.GPU_TARGET_CHUNKS_PER_S == pytest.approx(0.65 * at_peak, rel=0.05)


def test_the_benchmark_times_the_products_the_formula_counts():
    from longdoc.bench import ceiling

    for layers, hidden, ffn, heads in ((6, 384, 1536, 12), (24, 1024, 4096, 16)):
        arch = {"layers": layers, "hidden": hidden, "ffn": ffn, "heads": heads}
        for seq in (128, 512):
            shapes = ceiling.gemm_shapes(arch, seq)
            per_layer = sum(2.0 * s["batch"] * s["m"] * s["k"] * s["n"] for s in shapes)
            assert layers * per_layer == presets.window_flops(layers, hidden, ffn, seq)
            assert ceiling.window_flops(arch, seq) == presets.window_flops(layers, hidden, ffn, seq)


def test_the_package_reads_these_numbers():
    from longdoc.export import parity, sizing

    from longdoc.checkpoint import PRESETS

    assert PRESETS is presets.PRESETS
    assert tuple(presets.PRESETS) == contract.PRESETS  # the CLI's --preset choices
    assert parity.TOLERANCES is presets.TOLERANCES
    assert sizing.GPU_CEILING_CHUNKS_PER_S == presets.GPU_CEILING_CHUNKS_PER_S
    assert sizing.CHUNKER_HEADROOM == presets.CHUNKER_HEADROOM
    large = presets.PRESETS["bert-large-uncased"]  # DESIGN.md's numbers
    assert (large["num_hidden_layers"], large["hidden_size"]) == (24, 1024)
    assert (large["num_attention_heads"], large["intermediate_size"]) == (16, 4096)
    assert presets.VOCAB_SIZE == 30522
