"""The engines that encode windows for the feature cache (:mod:`longdoc.features`).

onnxruntime on an exported, fused copy of the encoder is the fastest on CPU and the same
graph family the server runs; PyTorch serves on CUDA or when asked. Both return, per
window, the masked mean of the last hidden states and BERT's pooled ``[CLS]`` output, side
by side. Kept apart from the cache so that the cache's bookkeeping reads on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _feature_module(encoder_dir: Path):
    import torch
    from transformers import BertModel

    from longdoc.heads import masked_mean

    class FeatureEncoder(torch.nn.Module):
        """ids, mask -> [masked mean of last hidden states | pooled [CLS]]."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(
                encoder_dir, attn_implementation="eager", add_pooling_layer=True
            )

        def forward(self, input_ids, attention_mask):
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            )
            pooled = masked_mean(out.last_hidden_state, attention_mask)
            return torch.cat([pooled, out.pooler_output], dim=-1)

    return FeatureEncoder().eval()


class OnnxFeatureEngine:
    """The feature encoder exported to ONNX and fused by ORT's BERT optimizer."""

    def __init__(self, encoder_dir: Path, cache_dir: Path, enc_hash: str, threads: int = 0):
        import warnings

        import torch

        from longdoc.runtime import make_session

        path = cache_dir / "onnx" / f"{enc_hash[:24]}.onnx"
        if not path.is_file():
            from longdoc.export.precision import fuse

            module = _feature_module(encoder_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            plain = path.with_suffix(".plain.onnx")
            ids = torch.full((1, 16), 1000, dtype=torch.int64)
            axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")}
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (ids, torch.ones_like(ids)),
                    str(plain),
                    opset_version=17,
                    dynamo=False,
                    input_names=["input_ids", "attention_mask"],
                    output_names=["features"],
                    dynamic_axes={**axes, "features": {0: "batch"}},
                )
            cfg = module.bert.config
            tmp = path.with_suffix(".tmp.onnx")
            fuse(plain, tmp, cfg.num_attention_heads, cfg.hidden_size)
            tmp.rename(path)
            plain.unlink()
        self.session = make_session(path, threads or None)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids[None, :], "attention_mask": np.ones((1, len(ids)), np.int64)}
        return self.session.run(["features"], feeds)[0][0]


class TorchFeatureEngine:
    def __init__(self, encoder_dir: Path, device: str = "cpu") -> None:
        self.module = _feature_module(encoder_dir).to(device)
        self.device = device

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(ids[None, :]).to(self.device)
            return self.module(t, torch.ones_like(t))[0].float().cpu().numpy()


def make_engine(encoder_dir: Path, cache_dir: Path, enc_hash: str, engine: str = "auto"):
    if engine == "auto":
        import torch

        engine = "torch" if torch.cuda.is_available() else "onnx"
    if engine == "onnx":
        return OnnxFeatureEngine(encoder_dir, cache_dir, enc_hash)
    import torch

    return TorchFeatureEngine(encoder_dir, "cuda" if torch.cuda.is_available() else "cpu")
