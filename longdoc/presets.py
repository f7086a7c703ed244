"""The numbers that the package and `gpu_checks` share: preset sizes, the FLOP arithmetic,
the GPU ceiling and the parity bounds. Standard library only.

Why a module of its own: `gpu_checks/run_gpu_checks.py` runs on a GPU machine straight
from the checkout, with whatever of torch, onnxruntime and transformers is installed there,
and must still know these numbers (a missing package skips a section, never the report).
`longdoc.checkpoint` (torch), `export.parity` (onnxruntime) and `export.sizing` take them
from here too, so there is one copy to change.
"""

from __future__ import annotations

# --- preset architectures (`--preset`; seeded random weights, no download) -------------
# In Hugging Face `BertConfig` keys. DESIGN.md: bert-large-uncased is 24 layers, 1024
# hidden, 16 heads, 4096 FFN, vocabulary 30522.
PRESETS: dict[str, dict[str, int]] = {
    "bert-large-uncased": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "bert-base-uncased": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    # tiny: a few MB, for unit tests on two cores.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}
# Every preset reads the uncased WordPiece vocabulary and BERT's 512 positions.
VOCAB_SIZE = 30522
MAX_POSITIONS = 512

# --- parity: max |delta document logits| against the PyTorch reference -----------------
# fp32: same math, different kernels. fp16 and int8: measured on the real all-MiniLM-L6-v2
# weights with a seeded classifier (logits of order 1-5), logits-mean and transformer heads,
# 1-15 chunks: fp16 7.2e-4, int8 0.18 (README "Precision and parity"); the bounds give
# headroom. Every export fails loudly past them (export/parity.py).
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 5e-3, "int8": 0.35}

# --- the GPU ceiling (DESIGN.md "Measuring", docs/GPU.md "The arithmetic") ---------------
# H100/H200 SXM dense FP16 tensor-core peak, TFLOP/s.
GPU_FP16_TFLOPS = 790.0
# bert-large at 512 tokens at that peak: 790e12 / window_flops(24, 1024, 4096, 512)
# (~335 GFLOP) ~ 2,356, written as DESIGN.md rounds it; the gpu profile sizes its chunker
# instances for this rate.
GPU_CEILING_CHUNKS_PER_S = 2350
# ~65% of peak, what TensorRT reaches on BERT-large (A100, seq 384, batch 128): the mark.
GPU_TARGET_CHUNKS_PER_S = 1500
# Chunker capacity / GPU rate: room for short documents, bursts and slower server cores.
CHUNKER_HEADROOM = 3


def window_flops(layers: int, hidden: int, ffn: int, seq: int) -> float:
    """Operations (a multiply-add counts 2) of one window of `seq` tokens through a BERT
    encoder: the dense weights `2 S (4 H^2 + 2 H F)` plus attention's QK^T and AV
    (`2 x 2 S^2 H`), per layer. Embeddings, softmax and layer norms are left out: under 1%
    at these sizes, and not what a GPU's matrix units are rated on."""
    dense = 4 * hidden * hidden + 2 * hidden * ffn
    return float(layers * (2 * seq * dense + 4 * seq * seq * hidden))


def preset_window_flops(name: str, seq: int = MAX_POSITIONS) -> float:
    """`window_flops` of a preset architecture."""
    p = PRESETS[name]
    return window_flops(p["num_hidden_layers"], p["hidden_size"], p["intermediate_size"], seq)
