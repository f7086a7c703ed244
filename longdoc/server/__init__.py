"""server: start and supervise a real tritonserver on a model repository."""
