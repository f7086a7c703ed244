"""`longdoc evaluate`: accuracy, macro-F1, per-class figures, confusion matrix, by length
(multi-label: micro- and macro-F1, subset accuracy, per-label figures, by length).

Three sources, one classifier interface (``longdoc.classifiers.open_classifier``), the same
decisions:

* ``--checkpoint DIR``: the PyTorch model (``longdoc.reference``, the ground truth); a
  checkpoint that ``longdoc train --freeze-encoder`` wrote is evaluated over the same
  feature cache (same encoder, same windows) unless ``--no-cache``; a TF-IDF baseline
  directory is evaluated with scikit-learn (``longdoc.tfidf``);
* ``--repository DIR``: the exported ONNX files in-process (``longdoc.runtime``);
* ``--url HOST:PORT``: a running server (``longdoc.client``), with the server flags every
  command shares (``--protocol --model --header --timeout --retries``).

Each document is tokenized once, by the classifier; only a source that does not report
token counts (a server, TF-IDF) has them counted here for the length buckets.

``--output DIR`` receives ``report.json`` and ``report.png``. The report's top level holds
``accuracy``, ``macro_f1``, ``documents`` and ``by_length`` (up to 512, 513-2048, over 2048
document tokens), then ``per_class``, ``confusion_matrix``, ``labels`` and one
``predictions`` row per document.

Multi-label data (or a multi-label model): the top level holds ``micro_f1``, ``macro_f1``,
``documents`` and ``by_length``, then ``subset_accuracy``, ``per_label``, ``labels``,
``problem``, ``thresholds`` (the source's, where it says) and one ``predictions`` row per
document (``labels`` true, ``predicted`` the decided list, ``logits``); ``report.png`` shows
each label's F1. The decisions are the classifier's own (``DocumentResult.decided``: the
thresholds of the checkpoint, of the repository's aggregator, of the server), so every
source of the same model decides the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from longdoc.classifiers import open_classifier
from longdoc.cli_options import (
    CommandFailed,
    UsageError,
    add_output_arg,
    add_server_args,
    server_kwargs,
)
from longdoc.contract import TOKENIZER_FILE
from longdoc.data import (
    DataError,
    Example,
    check_known_labels,
    data_hash,
    problem_of,
    read_dataset,
)
from longdoc.decision import MULTI_LABEL, SINGLE_LABEL
from longdoc.metrics import (
    by_length,
    classification_report,
    multilabel_by_length,
    multilabel_report,
    plot_confusion,
    plot_per_label_f1,
)
from longdoc.results import Classifier, DocumentError, DocumentResult

REPORT_FILE = "report.json"
BATCH_DOCS = 16  # documents per classify() call (a progress step)


class Predictions:
    """Per-document logits (label order ``labels``), window counts, token counts and the
    classifier's decisions (boolean ``[N, L]``: ``DocumentResult.decided``)."""

    def __init__(
        self,
        labels: list[str],
        logits: np.ndarray,
        num_chunks: list[int],
        num_tokens=None,
        decided: np.ndarray | None = None,
    ) -> None:
        self.labels = labels
        self.logits = logits
        self.num_chunks = num_chunks
        self.num_tokens = num_tokens
        if decided is None:  # the argmax, where the caller gives no decisions
            decided = np.arange(logits.shape[1]) == logits.argmax(axis=1)[:, None]
        self.decided = np.asarray(decided, dtype=bool)


def decided_matrix(results: list[DocumentResult], num_labels: int) -> np.ndarray:
    """Boolean ``[N, L]``: the labels each result decided."""
    out = np.zeros((len(results), num_labels), dtype=bool)
    for row, result in enumerate(results):
        out[row, result.decided] = True
    return out


def source_decision(classifier: Classifier):
    """The decision rule the classifier applies, where it says (a checkpoint's model, the
    TF-IDF baseline, a pipeline or client exposing ``decision``), else None."""
    decision = getattr(classifier, "decision", None)
    if decision is None:
        decision = getattr(getattr(classifier, "model", None), "decision", None)
    return decision


def predict(
    classifier: Classifier, examples: list[Example], progress: bool = True, desc: str = ""
) -> Predictions:
    """The classifier's decisions on ``examples``; a document it cannot classify is a
    ``DataError`` naming its file."""
    from tqdm import tqdm

    results: list[DocumentResult] = []
    with tqdm(
        total=len(examples), desc=desc or "evaluate", unit="doc", disable=not progress
    ) as bar:
        for start in range(0, len(examples), BATCH_DOCS):
            batch = examples[start : start + BATCH_DOCS]
            try:
                results += classifier.classify([e.text for e in batch])
            except DocumentError as exc:
                raise DataError(f"{batch[exc.index].source}: {exc}") from None
            bar.update(len(batch))
    logits = np.stack([np.asarray(r.logits, dtype=np.float32) for r in results])
    counts = [r.num_chunks for r in results]
    tokens = [r.num_tokens for r in results]
    decided = decided_matrix(results, logits.shape[1])
    return Predictions(list(classifier.labels), logits, counts, tokens, decided)


def count_tokens(examples: list[Example], tokenizer_path: Path | None = None) -> list[int]:
    from longdoc.checkpoint import default_tokenizer_dir
    from longdoc.chunking import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path or default_tokenizer_dir())
    return [len(tokenizer.encode(e.text, add_special_tokens=False).ids) for e in examples]


def build_report(
    examples: list[Example],
    preds: Predictions,
    num_tokens: list[int],
    source: str,
    problem: str | None = None,
    decision=None,
) -> dict:
    """The report of ``preds`` on ``examples``; ``problem`` (default: the data's) picks the
    single-label or the multi-label form, ``decision`` the thresholds it records."""
    labels = preds.labels
    check_known_labels(examples, labels)
    if (problem or problem_of(examples)) == MULTI_LABEL:
        return build_multilabel_report(examples, preds, num_tokens, source, decision)
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
        ],
    }
    return out


def build_multilabel_report(
    examples: list[Example], preds: Predictions, num_tokens: list[int], source: str, decision
) -> dict:
    """The multi-label report: micro/macro-F1, by length, subset accuracy, per label."""
    labels = preds.labels
    index = {label: i for i, label in enumerate(labels)}
    truth = np.zeros((len(examples), len(labels)), dtype=bool)
    for row, e in enumerate(examples):
        truth[row, [index[label] for label in e.label_set]] = True
    decided = preds.decided
    report = multilabel_report(truth, decided, labels)
    thresholds = None
    if decision is not None and decision.multi_label:
        thresholds = {"kind": decision.kind, "values": [float(t) for t in decision.thresholds]}
    return {
        "micro_f1": report["micro_f1"],
        "macro_f1": report["macro_f1"],
        "documents": report["documents"],
        "by_length": multilabel_by_length(truth, decided, num_tokens, labels),
        "subset_accuracy": report["subset_accuracy"],
        "per_label": report["per_label"],
        "labels": labels,
        "problem": MULTI_LABEL,
        "thresholds": thresholds,
        "source": source,
        "data_hash": data_hash(examples),
        "predictions": [
            {
                "id": e.id,
                "labels": list(e.label_set),
                "predicted": [labels[int(k)] for k in np.flatnonzero(row)],
                "num_tokens": int(n),
                "num_chunks": int(c),
                "logits": [round(float(x), 6) for x in logits],
            }
            for e, row, n, c, logits in zip(
                examples, decided, num_tokens, preds.num_chunks, preds.logits, strict=True
            )
        ],
    }


def evaluate(
    data: Path,
    *,
    checkpoint: Path | None = None,
    repository: Path | None = None,
    url: str | None = None,
    protocol: str = "grpc",
    output: Path | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    plot: bool = True,
    server: dict[str, Any] | None = None,
) -> dict:
    """Score one source on the labelled documents of ``data``; ``output``: the report's
    JSON file (its confusion matrix goes next to it as ``.png``). ``server``: the client's
    options for ``url`` (``cli_options.server_kwargs``: headers, timeout, retries, model)."""
    if sum(x is not None for x in (checkpoint, repository, url)) != 1:
        raise ValueError("give exactly one of --checkpoint, --repository or --url")
    examples = read_dataset(data)
    started = time.perf_counter()
    tokenizer_path = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        options = {"use_cache": use_cache, "cache_dir": cache_dir, "progress": progress}
        classifier = open_classifier(checkpoint=checkpoint, **options)
        source, desc = f"checkpoint:{checkpoint}", "evaluate (PyTorch)"
        if (checkpoint / TOKENIZER_FILE).is_file():
            tokenizer_path = checkpoint / TOKENIZER_FILE
    elif repository is not None:
        classifier = open_classifier(repository=repository)
        source, desc = f"repository:{repository}", "evaluate (onnxruntime)"
    else:
        options = {"protocol": protocol, "concurrency": 4, **(server or {})}
        options.pop("url", None)
        classifier = open_classifier(url=url, **options)
        source, desc = f"{options['protocol']}://{url}", "evaluate (server)"
    check_known_labels(examples, classifier.labels)  # before any compute
    decision = source_decision(classifier)
    model_problem = decision.problem if decision is not None else SINGLE_LABEL
    problem = MULTI_LABEL if MULTI_LABEL in (problem_of(examples), model_problem) else SINGLE_LABEL
    preds = predict(classifier, examples, progress, desc)
    seconds = time.perf_counter() - started
    num_tokens = preds.num_tokens
    if any(n is None for n in num_tokens):  # a source that does not tokenize here
        num_tokens = count_tokens(examples, tokenizer_path)
    report = build_report(examples, preds, num_tokens, source, problem, decision)
    report["seconds"] = round(seconds, 1)
    report["data"] = str(data)
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        if plot:
            try:
                plot_report(report, output.with_suffix(".png"))
            except ImportError:
                pass
    return report


def plot_report(report: dict, path: Path) -> None:
    """The confusion matrix (single-label) or each label's F1 (multi-label)."""
    if report.get("problem") == MULTI_LABEL:
        title = f"{report['source']}  micro-F1 {report['micro_f1']:.3f}"
        plot_per_label_f1(report["per_label"], path, title)
        return
    title = f"{report['source']}  accuracy {report['accuracy']:.3f}"
    plot_confusion(report["confusion_matrix"], report["labels"], path, title)


def summary_line(report: dict) -> str:
    long = report["by_length"]["over 2048"]
    if report.get("problem") == MULTI_LABEL:
        return (
            f"{report['documents']} documents: micro-F1 {report['micro_f1']:.4f}, macro-F1 "
            f"{report['macro_f1']:.4f}, subset accuracy {report['subset_accuracy']:.4f}; over "
            f"2048 tokens ({long['documents']}): micro-F1 {long['micro_f1']:.4f}"
        )
    return (
        f"{report['documents']} documents: accuracy {report['accuracy']:.4f}, macro-F1 "
        f"{report['macro_f1']:.4f}; over 2048 tokens ({long['documents']}): accuracy "
        f"{long['accuracy']:.4f}"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, macro-F1 and confusion matrix (multi-label: micro/macro-F1, subset "
        "accuracy, per label) of a model on labelled data",
        description="Evaluate a checkpoint (PyTorch), an exported repository (onnxruntime) "
        "or a running server on labelled documents.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, metavar="DIR")
    src.add_argument("--repository", type=Path, metavar="DIR")
    add_server_args(p, url_group=src)
    p.add_argument("--data", type=Path, required=True, help="label folders, .jsonl or .csv")
    add_output_arg(p, "report.json and report.png")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every window with PyTorch, even for a frozen encoder",
    )
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = args.output / REPORT_FILE
    try:
        report = evaluate(
            args.data,
            checkpoint=args.checkpoint,
            repository=args.repository,
            url=args.url,
            protocol=args.protocol,
            output=output,
            use_cache=not args.no_cache,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            server=server_kwargs(args) if args.url else None,
        )
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    except (RuntimeError, ConnectionError) as exc:  # e.g. the server could not be reached
        raise CommandFailed(str(exc)) from None
    print(summary_line(report) + f" -> {output}")
    return 0
