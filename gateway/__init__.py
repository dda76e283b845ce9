"""The xDS control plane and the launcher for a real Envoy gateway."""
