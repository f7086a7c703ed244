"""export: checkpoint -> verified ONNX files -> Triton model repository."""
