"""Shared runtime of the ocrmesh services: config, errors, logging, channels, lifecycle."""

__version__ = "0.1.0"
