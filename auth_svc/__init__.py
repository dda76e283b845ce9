"""The gRPC auth service: accounts, passwords, tokens, store, throttling."""
