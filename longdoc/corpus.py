"""Real text present on every machine: documents built from the Python standard library's
docstrings, for tests, demos and benchmarks.

A repeated sentence tokenizes into a handful of distinct windows and hides bugs (every window
looks alike); docstrings are varied English prose with code, punctuation and numbers.
Everything here is deterministic for a given seed and Python version.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
from collections.abc import Callable
from functools import lru_cache

# Modules whose docstrings are long, varied prose. Fixed order: determinism.
SOURCE_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "pydoc",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
)


def _clean(doc: str) -> str:
    doc = re.sub(r"[ \t]+", " ", doc)
    return re.sub(r"\n{3,}", "\n\n", doc).strip()


@lru_cache(maxsize=1)
def paragraphs() -> tuple[str, ...]:
    """Distinct paragraphs (>= 40 characters) of stdlib docstrings, in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []
    for name in SOURCE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            with warnings.catch_warnings():  # deprecated aliases warn on access
                warnings.simplefilter("ignore")
                obj = getattr(module, attr)
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for para in _clean(doc).split("\n\n"):
                para = para.strip()
                if len(para) >= 40 and para not in seen:
                    seen.add(para)
                    out.append(para)
    return tuple(out)


def document(
    num_words: int, seed: int = 0, count_tokens: Callable[[str], int] | None = None
) -> str:
    """A document of about ``num_words`` words of real text (or tokens, given a counter)."""
    rng = random.Random(seed)
    pool = paragraphs()
    start = rng.randrange(len(pool))
    parts: list[str] = []
    size = 0
    i = start
    while size < num_words:
        para = pool[i % len(pool)]
        parts.append(para)
        size += count_tokens(para) if count_tokens else len(para.split())
        i += rng.randint(1, 3)
    return "\n\n".join(parts)


def documents(lengths: list[int], seed: int = 0) -> list[str]:
    """One document per entry of ``lengths`` (in words), each from its own seed."""
    return [document(n, seed=seed * 100_003 + k) for k, n in enumerate(lengths)]


def corpus_lengths(n_docs: int, seed: int = 0, max_words: int = 24_000) -> list[int]:
    """Document lengths (words) for benchmarks: mostly 1-20 windows, a tail to ``max_words``.

    Log-normal with median ~1,500 words (~4 windows of 512 tokens); 15% of documents
    come from a uniform tail between 8,000 and ``max_words`` words; none below 80 words.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n_docs):
        if rng.random() < 0.15:
            n = rng.randint(8_000, max_words)
        else:
            n = int(rng.lognormvariate(7.3, 0.9))
        out.append(max(80, min(n, max_words)))
    return out


# ---------------------------------------------------------------------------------------
# The benchmark corpus (`longdoc bench`): lengths drawn in tokens, so the distribution in
# windows is known for a chunking configuration and no document exceeds ``max_chunks``.
# ---------------------------------------------------------------------------------------

# The distribution, in document tokens (without [CLS]/[SEP]), for 512-token windows with a
# 128-token overlap (one window holds 510 tokens, each further window adds 382):
#   body: 88% log-normal, median 1,500 tokens (~4 windows), sigma 0.9, at least 100 tokens;
#   tail: 12% uniform between 8,000 tokens (~21 windows) and the most ``max_chunks`` windows
#         hold (64 windows: 24,576 tokens).
# Measured over 2,000 documents (seed 0): token percentiles p10 514, p50 1,823, p90 12,717,
# max 24,276; windows: 1: 10%, 2-4: 37%, 5-10: 28%, 11-20: 8%, 21-40: 9%, 41-64: 7%
# (84% have 1-20 windows; mean 10.9 windows, of which the >20-window tail holds 61%).
BENCH_MEDIAN_TOKENS = 1_500
BENCH_SIGMA = 0.9
BENCH_MIN_TOKENS = 100
BENCH_TAIL_FRACTION = 0.12
BENCH_TAIL_MIN_TOKENS = 8_000


def max_tokens_for(max_chunks: int, max_length: int = 512, overlap: int = 128) -> int:
    """The most document tokens ``max_chunks`` windows of ``max_length`` hold (0, no cap:
    the 64 windows the benchmark corpus's tail was drawn to)."""
    max_chunks = max_chunks or 64
    body = max_length - 2
    return body + (max_chunks - 1) * (body - overlap)


def benchmark_token_lengths(n_docs: int, seed: int = 0, max_tokens: int = 24_576) -> list[int]:
    """Target lengths in tokens of the benchmark corpus (see the distribution above)."""
    import math

    rng = random.Random(seed)
    out = []
    for _ in range(n_docs):
        if rng.random() < BENCH_TAIL_FRACTION:
            n = rng.randint(min(BENCH_TAIL_MIN_TOKENS, max_tokens), max_tokens)
        else:
            n = int(rng.lognormvariate(math.log(BENCH_MEDIAN_TOKENS), BENCH_SIGMA))
        out.append(max(BENCH_MIN_TOKENS, min(n, max_tokens)))
    return out


def trim_to_tokens(text: str, max_tokens: int, tokenizer) -> str:
    """``text`` cut where its token number ``max_tokens`` (0-based) starts, trailing space
    dropped: the first ``max_tokens`` tokens stay (a WordPiece continuation may leave half a
    word at the end, which re-tokenizes to the same pieces)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    cut = encoding.offsets[max_tokens][0]
    while True:
        text = text[:cut].rstrip()
        if len(tokenizer.encode(text, add_special_tokens=False).ids) <= max_tokens:
            return text
        cut = len(text) - 1  # a merge across the cut (rare): drop one more character


def benchmark_corpus(
    n_docs: int, seed: int = 0, tokenizer=None, max_tokens: int = 24_576
) -> list[str]:
    """``n_docs`` real-text documents whose token counts follow ``benchmark_token_lengths``
    (each cut to its target, so none exceeds ``max_tokens``). Deterministic for a seed,
    Python version and tokenizer; documents come in draw order (lengths are independent,
    so any prefix of the list has the same distribution)."""
    if tokenizer is None:
        from longdoc.checkpoint import default_tokenizer_dir
        from longdoc.chunking import load_tokenizer

        tokenizer = load_tokenizer(default_tokenizer_dir())

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    texts = []
    for k, target in enumerate(benchmark_token_lengths(n_docs, seed, max_tokens)):
        text = document(target, seed=seed * 100_003 + k, count_tokens=count)
        texts.append(trim_to_tokens(text, target, tokenizer))
    return texts
