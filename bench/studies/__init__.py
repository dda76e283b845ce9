"""One-off and recurring studies built on the load tool: sweeps, peers, ceilings, accuracy."""
