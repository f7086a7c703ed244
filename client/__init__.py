"""client: classify documents and benchmark a running server over gRPC or HTTP."""
