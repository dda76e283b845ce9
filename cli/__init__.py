"""The `ocrmesh` console script and its subcommands; the one package that may import every other."""
