"""Facts about an exported ONNX file, read once: what the configs and the report state.

The one place that inspects an ONNX graph after export: ``export.repository`` decides
from these facts what a profile can serve (INT8 not on the GPU, no fused ops under
TensorRT, a heavy aggregator on the GPU), and ``export_report.json`` records them.
"""

from __future__ import annotations

from pathlib import Path

FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu")


def onnx_facts(path: str | Path) -> dict | None:
    """Precision, size and ops of an ONNX file (without external data), or None if absent.

    Keys: ``precision`` (int8 if any INT8/UINT8 initializer, else fp16 if any FLOAT16,
    else fp32), ``params`` (initializer elements), ``bytes`` (file size),
    ``initializer_dtypes`` (ONNX type name -> count), ``fused_ops`` (onnxruntime's fused
    kinds -> count), ``contrib_domains`` (non-standard op domains, sorted)."""
    path = Path(path)
    if not path.is_file():
        return None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dtypes: dict[str, int] = {}
    params = 0
    for init in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type)
        dtypes[name] = dtypes.get(name, 0) + 1
        size = 1
        for d in init.dims:
            size *= d
        params += size
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    if {"INT8", "UINT8"} & set(dtypes):
        precision = "int8"
    elif "FLOAT16" in dtypes:
        precision = "fp16"
    else:
        precision = "fp32"
    domains = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    return {
        "precision": precision,
        "params": params,
        "bytes": path.stat().st_size,
        "initializer_dtypes": dtypes,
        "fused_ops": {k: ops[k] for k in FUSED_OPS if k in ops},
        "contrib_domains": sorted(domains),
    }
