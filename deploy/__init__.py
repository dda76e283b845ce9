"""The local supervisor (`ocrmesh up`) and deployment files."""
