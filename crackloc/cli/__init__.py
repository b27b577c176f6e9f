"""The `crackloc` command line: a registry of subcommands (`registry`), one module per group."""

from crackloc.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
