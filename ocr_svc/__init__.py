"""The gRPC OCR service: admission queue, engine worker processes, guardrails, health, metrics."""
