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
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "enum", "fractions", "functools", "heapq", "http.client",
    "inspect", "io", "itertools", "json", "logging", "mailbox", "multiprocessing", "os",
    "pathlib", "pickle", "pydoc", "random", "re", "shutil", "socket", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest",
    "urllib.parse", "uuid", "zipfile",
)  # fmt: skip


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
