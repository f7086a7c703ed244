"""longdoc: whole long-document classification with BERT, served by NVIDIA Triton.

Core pieces shared by export, serving, the client and the tests:
`chunking` (the one source of truth for windows), `heads` (pooling heads),
`checkpoint` (reading checkpoints and presets), `reference` (PyTorch ground truth),
`runtime` (in-process onnxruntime pipeline), `corpus` (real text for tests and benchmarks).
"""

__version__ = "0.1.0"
