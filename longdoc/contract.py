"""The names every part agrees on: models, tensors, dtypes, choices, headers.

One source of truth for the contract in ``shared/DESIGN.md``: the exporter writes these
names into the model repository, the Triton models read them, the client and the benchmark
ask for them, the CLIs offer their choices. Standard library only, so that a
``longdoc[client]`` install (no torch, no onnxruntime) and the Triton stubs can import it.
"""

from __future__ import annotations

# --- models in the repository -------------------------------------------------------
ENSEMBLE = "document_classifier"
CHUNKER = "chunker"
# Sends a document's windows to the encoder in slices of <= its max_batch_size (BLS): the
# ensemble's second step, so a document of any length is read whole (README "Long documents").
DISPATCHER = "dispatcher"
ENCODER = "encoder"
AGGREGATOR = "aggregator"
MODELS = (CHUNKER, DISPATCHER, ENCODER, AGGREGATOR)
LABELS_FILE = "labels.txt"
CHUNKING_FILE = "chunking.json"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
# Next to an INT8 encoder (portable profile): its fused FP32 graph, which the encoder serves
# on CPUs without VNNI, where INT8 is no faster and less accurate (longdoc.runtime).
FP32_FALLBACK_FILE = "model_fp32.onnx"
EXPORT_REPORT = "export_report.json"
# How logits become a decision (problem, thresholds; ``longdoc.decision``): in a checkpoint
# and in the repository's ensemble folder, next to labels.txt.
DECISION_FILE = "decision.json"

# Checkpoint layout (a `longdoc train` output, or any directory `longdoc export` reads):
# the encoder's Hugging Face files, the head, the run's record, or the TF-IDF baseline.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HEAD_JSON = "head.json"
HEAD_WEIGHTS = "head.safetensors"
TRAINING_JSON = "training.json"
TRAINING_PNG = "training.png"
# arrays only (numpy .npz read with allow_pickle=False): a checkpoint is data, never code
TFIDF_FILE = "tfidf.npz"

# --- ensemble I/O (what a client sends and gets) ------------------------------------
TEXT = "TEXT"
LOGITS = "LOGITS"
PROBABILITIES = "PROBABILITIES"
NUM_CHUNKS = "NUM_CHUNKS"
CHUNK_LOGITS = "CHUNK_LOGITS"
CHUNK_SPANS = "CHUNK_SPANS"
# Windows the whole document has; NUM_CHUNKS is how many were read (fewer only under an
# opt-in --max-chunks cap with the head/head_tail overflow policy).
TOTAL_CHUNKS = "TOTAL_CHUNKS"
# [n_chunks, L]: each window's weight in each label's document score (the pooling's own
# weights: 1/n for the mean heads, the maximum's window for logits-max, learned attention
# for the attention head); what --explain reads for the decisive window.
CHUNK_WEIGHTS = "CHUNK_WEIGHTS"
# [L] BOOL: the labels decided (single-label: the argmax; multi-label: each label whose
# probability is at or over its threshold, thresholds baked into the aggregator at export).
DECISIONS = "DECISIONS"
ENSEMBLE_OUTPUTS = (
    LOGITS,
    PROBABILITIES,
    NUM_CHUNKS,
    CHUNK_LOGITS,
    CHUNK_SPANS,
    TOTAL_CHUNKS,
    CHUNK_WEIGHTS,
    DECISIONS,
)

# --- between the steps ----------------------------------------------------------------
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK)
CHUNK_VECTORS = "chunk_vectors"
ENCODER_OUTPUT = CHUNK_VECTORS
AGGREGATOR_INPUT = CHUNK_VECTORS
AGGREGATOR_OUTPUTS = (LOGITS, PROBABILITIES, CHUNK_LOGITS, CHUNK_WEIGHTS, DECISIONS)
CHUNKER_INPUT = TEXT
CHUNKER_OUTPUTS = (INPUT_IDS, ATTENTION_MASK, CHUNK_SPANS, NUM_CHUNKS, TOTAL_CHUNKS)
DISPATCHER_INPUTS = ENCODER_INPUTS
DISPATCHER_OUTPUT = CHUNK_VECTORS

# Per-model parameters the exporter writes into config.pbtxt and the Python-backend
# models read (``longdoc.runtime.config_param``).
PARAM_ONNX_FILE = "onnx_file"
PARAM_ORT_THREADS = "ort_threads"  # portable models: onnxruntime intra-op threads (0: all)
PARAM_ORT_BATCH = "ort_batch"  # portable encoder: windows per onnxruntime call (0: all)
PARAM_ENCODER_MODEL = "encoder_model"  # dispatcher: the model it sends windows to
PARAM_SLICE_WINDOWS = "slice_windows"  # dispatcher: windows per encoder request
PARAM_INFLIGHT_SLICES = "inflight_slices"  # dispatcher: encoder requests out per document
# dispatcher and portable encoder: the window lengths (comma-separated seq_buckets) and the
# windows per document (max_windows) the export allows; other requests are refused.
PARAM_SEQ_LENGTHS = "seq_lengths"
# ensemble: its decision rule (longdoc.decision.Decision as JSON), so a client reading the
# model's config knows the problem and the thresholds behind DECISIONS.
PARAM_DECISION = "decision"
PARAM_MAX_WINDOWS = "max_windows"
# Metadata of the encoder ONNX graph (export.to_onnx): what the portable encoder checks ids
# and window lengths against.
META_VOCAB_SIZE = "vocab_size"
META_MAX_POSITIONS = "max_positions"
# Triton's onnxruntime backend's own key for intra-op threads (cpu/gpu profiles).
PARAM_ORT_INTRA_OP_THREADS = "intra_op_thread_count"

# Triton dtype names (config.pbtxt) and the numpy dtypes they carry.
DTYPES = {
    TEXT: "TYPE_STRING",
    INPUT_IDS: "TYPE_INT64",
    ATTENTION_MASK: "TYPE_INT64",
    CHUNK_VECTORS: "TYPE_FP32",
    LOGITS: "TYPE_FP32",
    PROBABILITIES: "TYPE_FP32",
    NUM_CHUNKS: "TYPE_INT32",
    TOTAL_CHUNKS: "TYPE_INT32",
    CHUNK_LOGITS: "TYPE_FP32",
    CHUNK_SPANS: "TYPE_INT64",
    CHUNK_WEIGHTS: "TYPE_FP32",
    DECISIONS: "TYPE_BOOL",
}

# --- choices the CLIs offer ---------------------------------------------------------
HEADS = ("logits-mean", "logits-max", "mean-pool", "transformer", "attention")
LOGIT_HEADS = ("logits-mean", "logits-max")
# single-label: softmax, the argmax decides; multi-label: a sigmoid per label, each label
# over its threshold is in the document's set.
PROBLEMS = ("single-label", "multi-label")
PRECISIONS = ("fp32", "fp16", "int8")
PROFILES = ("portable", "cpu", "gpu")
PRESETS = ("bert-large-uncased", "bert-base-uncased", "tiny")
# The backend that serves the encoder and aggregator in each profile.
PROFILE_BACKENDS = {"portable": "python", "cpu": "onnxruntime", "gpu": "onnxruntime"}
OVERFLOW_POLICIES = ("error", "head", "head_tail")
STRATEGIES = ("fixed", "balanced")
# How documents become windows unless told otherwise: `ChunkingConfig`'s field defaults,
# and what `--help` of `longdoc export` and `longdoc train` shows (one source for both).
CHUNKING_DEFAULTS = {
    "max_length": 512,
    "overlap": 128,
    "max_chunks": 0,  # 0: every window (an opt-in cap; past it `overflow` decides)
    "overflow": "error",
    "strategy": "fixed",
    "seq_buckets": (128, 256, 384, 512),
    "max_bytes": 4_000_000,
    "max_windows": 20_000,  # 4 MB of text is at most ~4M tokens (~10,500 windows of 512)
}

# --- server lock-down ---------------------------------------------------------------
ADMIN_HEADER = "admin-key"
# Triton prefixes the gRPC restriction header: gRPC clients send this metadata key.
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
ADMIN_KEY_ENV = "LONGDOC_ADMIN_KEY"
ENV_PREFIX = "LONGDOC_"
