"""FP32 graph -> the served encoder: fused FP32, FP16 (FP32 I/O) or dynamic INT8.

* ``fp32``: ONNX Runtime's transformer optimizer (fused Attention, SkipLayerNormalization,
  BiasGelu); measured 1.6x faster than the plain graph on CPU (DESIGN.md).
* ``fp16``: the same fused graph, then ``convert_float_to_float16(keep_io_types=True)``:
  clients and the aggregator keep FP32 tensors; the GPU does FP16 math.
* ``int8``: the fused graph, then ``quantize_dynamic`` (weights INT8 per output channel,
  activations UINT8 quantized on the fly), the fastest CPU option.
* ``plain``: no fusion, for TensorRT (it cannot run ORT's fused contrib ops) and debugging.

optimum's ``ORTOptimizer``/``ORTQuantizer`` wrap these same ORT functions but want an
optimum model object and its config; our graphs are custom, so we call ORT directly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx

from longdoc.contract import PRECISIONS

# Ops kept in FP32 inside the FP16 graph. The masked mean over up to 512 token states and
# the final division are sums of many terms: FP32 keeps them from losing precision.
FP16_OP_BLOCK_LIST = ["ReduceSum", "Div", "Clip", "Softmax"]


def fuse(src: Path, dst: Path, num_heads: int, hidden_size: int, fp16: bool = False) -> Path:
    """Run ORT's BERT optimizer (and optionally FP16 conversion) from ``src`` to ``dst``."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=1,
        use_gpu=fp16,
    )
    if fp16:
        optimized.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_OP_BLOCK_LIST)
    optimized.save_model_to_file(str(dst))
    return dst


# quantize_dynamic's settings, each measured A/B (BENCHMARKS.md, "INT8 kernels" and "INT8 on
# CPUs with and without VNNI"):
# * weights QInt8 with UINT8 activations (DynamicQuantizeLinear only makes UINT8): the
#   u8 x s8 product is what AVX-512 VNNI's vpdpbusd computes, and MLAS's VNNI kernel ran
#   (perf + objdump, `longdoc bench --ceiling`); QUInt8 weights take MLAS's u8 x u8 path,
#   measured 1.19x over FP32 against 1.47x, and 0.98x (no gain) on a Xeon with AMX;
# * per_channel: one scale per output column instead of one per matrix; the same kernel
#   (the scales apply to the INT32 result), so the same speed (measured 1.53x vs 1.47x,
#   within noise), and max |delta logits| 0.36 -> 0.14, window decisions 67% -> 94% equal
#   to FP32's on the MiniLM classifier;
# * reduce_range (7-bit weights) avoids the int16 saturation of the AVX2 path without VNNI
#   (vpmaddubsw), but costs decisions on every CPU: 95.3% agreement with FP32 against
#   97.3% for full-range weights on 150 kernel-docs documents (VNNI). On a CPU without VNNI
#   INT8 is no faster than FP32 anyway (4.6 vs 4.7 windows/s, issue #21), so an INT8 export
#   keeps full-range weights for VNNI and ships the fused FP32 graph next to them
#   (contract.FP32_FALLBACK_FILE), which the portable encoder serves on other CPUs;
# * quantizing attention's own products too (unfused graph, every MatMul dynamic): slower
#   (1.23-1.33x), the fused QAttention kernel wins.
INT8_SETTINGS = {"per_channel": True, "reduce_range": False, "weight_type": "QInt8"}


def quantize_int8(src: Path, dst: Path, settings: dict | None = None) -> Path:
    """Dynamic INT8 quantization of the encoder layers' MatMul/Attention weights.

    The pooler and classifier stay FP32: they are a sliver of the compute and sit right
    before the logits, where quantization error is not averaged away. ``settings`` (for
    measurements; default ``INT8_SETTINGS``): ``per_channel``, ``reduce_range``,
    ``weight_type`` (``QInt8`` or ``QUInt8``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {**INT8_SETTINGS, **(settings or {})}
    model = onnx.load(str(src), load_external_data=False)
    keep_fp32 = [n.name for n in model.graph.node if "pooler" in n.name or "classifier" in n.name]
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=getattr(QuantType, settings["weight_type"]),
        nodes_to_exclude=keep_fp32,
        per_channel=settings["per_channel"],
        reduce_range=settings["reduce_range"],
        # the fused graph has contrib ops without type info: default them to FP32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return dst


def convert(
    plain: Path,
    dst: Path,
    precision: str,
    num_heads: int,
    hidden_size: int,
    fused: bool = True,
    fp32_fallback: Path | None = None,
) -> Path:
    """The served encoder at ``precision`` from the plain FP32 export. For ``int8``,
    ``fp32_fallback`` keeps the FP32 graph it was quantized from at that path."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (got {precision!r})")
    if not fused:
        if precision == "int8":
            quantize_int8(plain, dst)
            if fp32_fallback:
                shutil.copy(plain, fp32_fallback)
            return dst
        # TensorRT builds FP16 engines itself from the plain FP32 graph (precision_mode).
        shutil.copy(plain, dst)
        return dst
    if precision == "int8":
        fused_path = dst.with_name("fused_fp32.onnx")
        fuse(plain, fused_path, num_heads, hidden_size)
        quantize_int8(fused_path, dst)
        if fp32_fallback:
            fused_path.replace(fp32_fallback)
        else:
            fused_path.unlink()
        return dst
    return fuse(plain, dst, num_heads, hidden_size, fp16=precision == "fp16")
