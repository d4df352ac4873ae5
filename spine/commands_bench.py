"""`spine bench`: the load generator against our stack and the original-style baseline."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's subcommands to the ``spine`` parser."""
