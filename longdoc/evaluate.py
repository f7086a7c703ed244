"""`longdoc evaluate`: accuracy, macro-F1, per-class figures, confusion matrix, by length.

Three sources, the same decisions:

* ``--checkpoint DIR``: the PyTorch model (``longdoc.reference``, the ground truth); a
  checkpoint that ``longdoc train --freeze-encoder`` wrote is evaluated over the same
  feature cache (same encoder, same windows) unless ``--no-cache``; a TF-IDF baseline
  directory is evaluated with scikit-learn;
* ``--repository DIR``: the exported ONNX files in-process (``longdoc.runtime``);
* ``--url HOST:PORT``: a running server (``DocumentClassifierClient``).

The report's top level holds ``accuracy``, ``macro_f1``, ``documents`` and ``by_length``
(up to 512, 513-2048, over 2048 document tokens), then ``per_class``,
``confusion_matrix``, ``labels`` and one ``predictions`` row per document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from longdoc.data import DataError, Example, check_known_labels, data_hash, read_dataset
from longdoc.metrics import by_length, classification_report, plot_confusion

TRAINING_JSON = "training.json"


class Predictions:
    """Per-document logits (label order ``labels``) and document token counts."""

    def __init__(self, labels: list[str], logits: np.ndarray, num_chunks: list[int]) -> None:
        self.labels = labels
        self.logits = logits
        self.num_chunks = num_chunks


def _training_record(checkpoint: Path) -> dict:
    path = checkpoint / TRAINING_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def predict_tfidf(checkpoint: Path, examples: list[Example]) -> Predictions:
    import pickle

    with (checkpoint / "tfidf.pkl").open("rb") as f:
        saved = pickle.load(f)  # noqa: S301  (a file `longdoc train` wrote)
    proba = saved["pipeline"].predict_proba([e.text for e in examples])
    logits = np.log(np.clip(proba, 1e-12, None)).astype(np.float32)
    return Predictions(list(saved["labels"]), logits, [0] * len(examples))


def predict_checkpoint(
    checkpoint: Path, examples: list[Example], *, use_cache: bool = True,
    cache_dir: Path | None = None, progress: bool = True,
) -> Predictions:  # fmt: skip
    """PyTorch decisions of a checkpoint directory (a `longdoc train` output or any
    checkpoint `longdoc export` reads)."""
    import torch
    from tqdm import tqdm

    from longdoc.checkpoint import load_checkpoint
    from longdoc.chunking import ChunkingError, load_tokenizer
    from longdoc.features import document_windows, encoder_hash
    from longdoc.reference import encode_chunks

    if (checkpoint / "tfidf.pkl").is_file():
        return predict_tfidf(checkpoint, examples)
    record = _training_record(checkpoint)
    model = load_checkpoint(checkpoint)
    mode = record.get("window", "chunks")
    encoder = record.get("encoder", {})
    frozen_dir = Path(encoder["path"]) if encoder.get("frozen") else None
    if use_cache and frozen_dir and (frozen_dir / "config.json").is_file() and \
            encoder_hash(frozen_dir) == encoder.get("hash"):  # fmt: skip
        return _predict_from_cache(model, record, frozen_dir, examples, cache_dir, progress)
    tokenizer = load_tokenizer(model.tokenizer_path)
    logits, counts = [], []
    with torch.inference_mode():
        for e in tqdm(examples, desc="evaluate (PyTorch)", unit="doc", disable=not progress):
            try:
                rows, _ = document_windows(e.text, tokenizer, model.chunking, mode)
            except ChunkingError as exc:
                raise DataError(f"{e.source}: {exc}") from None
            if mode == "chunks":  # the reference path exactly (padded windows)
                from longdoc.chunking import chunk_text

                chunks = chunk_text(e.text, tokenizer, model.chunking)
                vectors = encode_chunks(model, chunks)
            else:
                ids = torch.from_numpy(rows[0][None, :])
                vectors = model.encoder(ids, torch.ones_like(ids))
            out, _ = model.aggregator(
                vectors.unsqueeze(0), torch.ones((1, len(vectors)), dtype=torch.int64)
            )
            logits.append(out[0].float().numpy())
            counts.append(len(vectors))
    return Predictions(model.labels, np.stack(logits), counts)


def _predict_from_cache(model, record, encoder_dir, examples, cache_dir, progress):
    import torch

    from longdoc.chunking import ChunkingConfig
    from longdoc.contract import LOGIT_HEADS
    from longdoc.features import compute_features, feature_chunking, select_features
    from longdoc.heads import pad_batch

    mode = record.get("window", "chunks")
    chunking = ChunkingConfig.from_dict(record.get("chunking") or model.chunking.to_dict())
    feats = compute_features(examples, encoder_dir, feature_chunking(chunking, mode), mode=mode,
                             cache_dir=cache_dir, progress=progress)  # fmt: skip
    kind = "pooled" if model.head in LOGIT_HEADS else "mean"
    vectors = select_features(feats, examples, chunking, mode, kind)
    logits = []
    with torch.inference_mode():
        for i in range(0, len(vectors), 64):
            x, mask = pad_batch([torch.from_numpy(np.ascontiguousarray(v))
                                 for v in vectors[i : i + 64]], "cpu")  # fmt: skip
            if model.head in LOGIT_HEADS:
                x = model.encoder.bert.classifier(x)
            out, _ = model.aggregator(x, mask)
            logits.append(out.float().numpy())
    return Predictions(model.labels, np.concatenate(logits), [len(v) for v in vectors])


def predict_repository(repository: Path, examples: list[Example], progress: bool = True):
    from tqdm import tqdm

    from longdoc.chunking import ChunkingError
    from longdoc.runtime import OnnxPipeline

    pipeline = OnnxPipeline(repository)
    logits, counts = [], []
    for e in tqdm(examples, desc="evaluate (onnxruntime)", unit="doc", disable=not progress):
        try:
            result = pipeline.classify([e.text])[0]
        except ChunkingError as exc:
            raise DataError(f"{e.source}: {exc}") from None
        logits.append(np.asarray(result.logits, dtype=np.float32))
        counts.append(result.num_chunks)
    return Predictions(pipeline.labels, np.stack(logits), counts)


def predict_url(url: str, examples: list[Example], protocol: str = "grpc", concurrency: int = 4):
    from longdoc.client.classifier import DocumentClassifierClient

    client = DocumentClassifierClient(url, protocol=protocol)
    results = client.classify([e.text for e in examples], ids=[e.id for e in examples],
                              concurrency=concurrency)  # fmt: skip
    failed = [(e, r) for e, r in zip(examples, results, strict=True) if r.error]
    if failed:
        e, r = failed[0]
        raise DataError(f"{e.source}: the server refused it: {r.error}")
    labels = results[0].labels
    logits = np.stack([np.asarray(r.logits, dtype=np.float32) for r in results])
    return Predictions(labels, logits, [r.num_chunks for r in results])


def count_tokens(examples: list[Example], tokenizer_path: Path | None = None) -> list[int]:
    from longdoc.checkpoint import default_tokenizer_dir
    from longdoc.chunking import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path or default_tokenizer_dir())
    return [len(tokenizer.encode(e.text, add_special_tokens=False).ids) for e in examples]


def build_report(examples: list[Example], preds: Predictions, num_tokens: list[int],
                 source: str) -> dict:  # fmt: skip
    labels = preds.labels
    check_known_labels(examples, labels)
    index = {label: i for i, label in enumerate(labels)}
    y_true = np.asarray([index[e.label] for e in examples])
    y_pred = preds.logits.argmax(axis=1)
    report = classification_report(y_true, y_pred, labels)
    out = {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "documents": report["documents"],
        "by_length": by_length(y_true, y_pred, num_tokens, labels),
        "source": source,
        "data_hash": data_hash(examples),
        "labels": labels,
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "predictions": [
            {
                "id": e.id,
                "label": e.label,
                "predicted": labels[int(p)],
                "num_tokens": int(n),
                "num_chunks": int(c),
                "logits": [round(float(x), 6) for x in row],
            }
            for e, p, n, c, row in zip(
                examples, y_pred, num_tokens, preds.num_chunks, preds.logits, strict=True
            )
        ],  # fmt: skip
    }
    return out


def evaluate(data: Path, *, checkpoint: Path | None = None, repository: Path | None = None,
             url: str | None = None, protocol: str = "grpc", output: Path | None = None,
             use_cache: bool = True, cache_dir: Path | None = None, progress: bool = True,
             plot: bool = True) -> dict:  # fmt: skip
    if sum(x is not None for x in (checkpoint, repository, url)) != 1:
        raise ValueError("give exactly one of --checkpoint, --repository or --url")
    examples = read_dataset(data)
    started = time.perf_counter()
    tokenizer_path = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        labels = _labels_of_checkpoint(checkpoint)
        check_known_labels(examples, labels)  # before any compute
        preds = predict_checkpoint(checkpoint, examples, use_cache=use_cache,
                                   cache_dir=cache_dir, progress=progress)  # fmt: skip
        source = f"checkpoint:{checkpoint}"
        if (checkpoint / "tokenizer.json").is_file():
            tokenizer_path = checkpoint / "tokenizer.json"
    elif repository is not None:
        from longdoc.runtime import read_labels

        repository = Path(repository)
        check_known_labels(examples, read_labels(repository / "document_classifier" / "labels.txt"))
        preds = predict_repository(repository, examples, progress)
        source = f"repository:{repository}"
        tokenizer_path = repository / "chunker" / "1" / "tokenizer.json"
    else:
        preds = predict_url(url, examples, protocol)
        source = f"{protocol}://{url}"
    seconds = time.perf_counter() - started
    report = build_report(examples, preds, count_tokens(examples, tokenizer_path), source)
    report["seconds"] = round(seconds, 1)
    report["data"] = str(data)
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        if plot:
            try:
                plot_confusion(report["confusion_matrix"], report["labels"],
                               output.with_suffix(".png"),
                               f"{source}  accuracy {report['accuracy']:.3f}")  # fmt: skip
            except ImportError:
                pass
    return report


def _labels_of_checkpoint(checkpoint: Path) -> list[str]:
    if (checkpoint / "head.json").is_file():
        return list(json.loads((checkpoint / "head.json").read_text())["labels"])
    record = _training_record(checkpoint)
    if "labels" in record:
        return list(record["labels"])
    config = checkpoint / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label", {})
        return [id2label[k] for k in sorted(id2label, key=int)]
    raise FileNotFoundError(f"{checkpoint}: no head.json, training.json or config.json")


def summary_line(report: dict) -> str:
    long = report["by_length"]["over 2048"]
    return (f"{report['documents']} documents: accuracy {report['accuracy']:.4f}, macro-F1 "
            f"{report['macro_f1']:.4f}; over 2048 tokens ({long['documents']}): accuracy "
            f"{long['accuracy']:.4f}")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="accuracy, macro-F1 and confusion matrix of a model on labelled data",
        description="Evaluate a checkpoint (PyTorch), an exported repository (onnxruntime) "
        "or a running server on labelled documents.",
    )  # fmt: skip
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path)
    src.add_argument("--repository", type=Path)
    src.add_argument("--url", help="HOST:PORT of a running server")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--data", type=Path, required=True, help="label folders, .jsonl or .csv")
    p.add_argument("--output", type=Path, required=True, help="report.json (+ report.png)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every window with PyTorch, even for a frozen encoder",
    )
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = evaluate(
            args.data, checkpoint=args.checkpoint, repository=args.repository, url=args.url,
            protocol=args.protocol, output=args.output, use_cache=not args.no_cache,
            cache_dir=args.cache_dir, progress=not args.no_progress,
        )  # fmt: skip
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary_line(report) + f" -> {args.output}")
    return 0
