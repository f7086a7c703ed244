"""How the client library and the benchmark talk to Triton: one place for each rule.

* addresses and protocols (``normalize_url``, ``default_url``, ``aio_client``);
* headers (``parse_header``: the CLIs' ``--header NAME:VALUE``; ``wire_headers``: what is
  sent on each protocol);
* what a tritonclient error says (``error_text``) and whether it may be retried
  (``is_retryable``): only when the server did not run the request (gRPC ``UNAVAILABLE``,
  HTTP 502/503/504, a refused or dropped connection, a model that is being reloaded, a
  queue-policy refusal), never
  after a deadline the client set itself (``DeadlineExceeded``, gRPC ``DEADLINE_EXCEEDED``,
  any timeout): the server may still be working on it, and sending it again doubles the
  work of a server that is already slow;
* the model's metadata as a plain dict, the ``TEXT`` input and the requested outputs.

tritonclient and numpy only (the ``longdoc[client]`` install), imported when first used.
"""

from __future__ import annotations

import asyncio
import re

from longdoc import contract

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# HTTP statuses of a server (or a proxy in front of it) that did not run the request.
RETRY_HTTP_STATUSES = ("502", "503", "504")
# Answers that say the request never ran, recognized by their text because the status
# code does not survive every path (an ensemble step, a BLS call inside a Python model
# report them as INTERNAL): a model being reloaded or its backend stub being replaced
# (server restart, `longdoc serve --restart`), a server that is shutting down ("Server not
# ready", e.g. to a step's BLS call), and the encoder's queue policy refusing a request
# (`longdoc export --max-queue-size / --queue-timeout-us`: UNAVAILABLE at the encoder).
NOT_RUN_MESSAGES = (
    "no available versions",
    "is not healthy",
    "server not ready",
    "exceeds maximum queue size",
    "request timeout expired",
)
# aiohttp: could not connect / the server closed the connection before answering (Triton
# closes idle keep-alive connections when it stops).
CONNECTION_ERRORS = ("ClientConnectorError", "ServerDisconnectedError")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP token (RFC 9110)


class DeadlineExceeded(TimeoutError):
    """The deadline the client set for a document passed: never retried."""


def normalize_url(url: str) -> str:
    """``host:port`` (tritonclient takes no scheme)."""
    return url.removeprefix("http://").removeprefix("grpc://").rstrip("/")


def default_url(protocol: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[protocol]}"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'grpc' or 'http' (got {protocol!r})")
    return protocol


def parse_header(value: str) -> tuple[str, str]:
    """``NAME:VALUE`` -> (name, value); an ``argparse`` type (raises ValueError)."""
    import argparse

    name, sep, content = value.partition(":")
    name = name.strip()
    if not sep or not name or not HEADER_NAME.match(name):
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE with an HTTP header name: {value!r}")
    content = content.strip()
    if any(c in content for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"header {name}: the value holds a line break or NUL")
    return name, content


def wire_headers(headers: dict[str, str] | None, protocol: str) -> dict[str, str]:
    """The headers as sent. gRPC metadata keys are lower case; Triton expects its admin
    key over gRPC as ``triton-grpc-protocol-admin-key``, so ``admin-key`` is sent under that
    name there (the same ``--header admin-key:KEY`` works on both protocols)."""
    out = {}
    for name, value in (headers or {}).items():
        if protocol == "grpc":
            name = name.lower()
            if name == contract.ADMIN_HEADER:
                name = contract.GRPC_ADMIN_HEADER
        out[name] = value
    return out


def aio_module(protocol: str):
    if check_protocol(protocol) == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    return module


def aio_client(protocol: str, url: str, timeout_s: float | None = None, max_inflight: int = 100):
    """A tritonclient aio client. HTTP: a connection pool large enough for ``max_inflight``
    requests, and aiohttp's own per-request limit (60 s by default) raised to ``timeout_s``
    so that the caller's deadline is the one that applies."""
    module = aio_module(protocol)
    if protocol == "grpc":
        return module.InferenceServerClient(normalize_url(url))
    return module.InferenceServerClient(
        normalize_url(url),
        conn_limit=max(100, max_inflight + 4),
        conn_timeout=max(60.0, (timeout_s or 0) + 5),
    )


def status_of(exc: BaseException) -> str:
    """tritonclient's status of an error: ``StatusCode.X`` (gRPC), ``"503"`` (HTTP), or ""."""
    status = getattr(exc, "status", None)
    try:
        value = status() if callable(status) else status
    except Exception:
        value = None
    return str(value or "")


def error_text(exc: BaseException) -> str:
    """What an error says, in one line of at most a few hundred characters: tritonclient's
    message (not its repr), a proxy's HTML error page by its title, else the exception."""
    if isinstance(exc, DeadlineExceeded):
        return str(exc)
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    text = (text or type(exc).__name__).strip()
    # A proxy in front of Triton (ingress, nginx) answers with an HTML page, which
    # tritonclient.http reports as a JSON parse error; say what the page says instead.
    title = re.search(r"<title>\s*([^<]{1,200}?)\s*</title>", text, re.IGNORECASE)
    if title and "decoding the response" in text:
        return f"HTTP {title.group(1)} (from a proxy in front of the server)"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not str(exc):
        return "timed out"
    return text


def is_retryable(exc: BaseException, read_only: bool = False) -> bool:
    """True when the server did not run the request, so sending it again is safe and
    useful; False after any timeout (the client's own deadline: the request may still be
    running) and for every answer the server did give (bad input, internal errors).
    ``read_only`` calls (metadata, health) also retry any other connection failure (a
    reset while a server restarts): repeating them costs the server nothing."""
    status = status_of(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or status in (
        "StatusCode.DEADLINE_EXCEEDED",
        "StatusCode.CANCELLED",
    ):
        return False
    if isinstance(exc, ConnectionRefusedError) or (read_only and isinstance(exc, OSError)):
        return True
    if any(cls.__name__ in CONNECTION_ERRORS for cls in type(exc).__mro__):
        return True
    if status == "StatusCode.UNAVAILABLE" or status in RETRY_HTTP_STATUSES:
        return True
    text = error_text(exc).lower()
    return any(marker in text for marker in NOT_RUN_MESSAGES)


def metadata_dict(meta) -> dict:
    """Model metadata as a dict with integer shapes (HTTP gives a dict, gRPC a message)."""
    if not isinstance(meta, dict):
        from google.protobuf.json_format import MessageToDict

        meta = MessageToDict(meta, preserving_proto_field_name=True)
    for tensor in meta.get("outputs", []) + meta.get("inputs", []):
        tensor["shape"] = [int(s) for s in tensor.get("shape", [])]
    return meta


def output_shapes(meta: dict) -> dict[str, list[int]]:
    return {o["name"]: o["shape"] for o in meta.get("outputs", [])}


def text_input(module, data: bytes):
    """The ensemble's ``TEXT`` input holding one document."""
    import numpy as np

    tensor = module.InferInput(contract.TEXT, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    return tensor


def requested_outputs(module, shapes: dict[str, list[int]], names=None) -> list:
    """The raw outputs ``names`` (default: all but PROBABILITIES) that the model has, and
    PROBABILITIES through Triton's classification extension (``class_count``: every label
    with its name, "p:index:label")."""
    names = names or [n for n in contract.ENSEMBLE_OUTPUTS if n != contract.PROBABILITIES]
    outputs = [module.InferRequestedOutput(n) for n in names if n in shapes]
    if contract.PROBABILITIES in shapes:
        num_labels = shapes[contract.LOGITS][-1]
        outputs.append(module.InferRequestedOutput(contract.PROBABILITIES, class_count=num_labels))
    return outputs


async def infer(client, protocol: str, model: str, inputs, outputs, headers, timeout_s: float):
    """One inference with a deadline of ``timeout_s``: gRPC carries it to the server (its
    deadline), and the wait is bounded here for both protocols. Past it: DeadlineExceeded."""
    kwargs = {"outputs": outputs, "headers": headers}
    if protocol == "grpc":
        kwargs["client_timeout"] = timeout_s
    late = f"no answer within the client's deadline of {timeout_s:g} s"
    try:
        return await asyncio.wait_for(client.infer(model, inputs, **kwargs), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(late) from None
    except Exception as exc:
        if status_of(exc) == "StatusCode.DEADLINE_EXCEEDED":
            raise DeadlineExceeded(late) from exc
        raise


async def statistics(client, protocol: str, headers=None, model: str = "") -> dict:
    """Triton's statistics extension as a dict (the gRPC reply converted to its JSON)."""
    if protocol == "grpc":
        return await client.get_inference_statistics(model, headers=headers, as_json=True)
    return await client.get_inference_statistics(model, headers=headers)
