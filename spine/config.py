"""Each ``spine`` process reads its settings here, once, at its entry point.

``spine.cli.main`` reads :class:`~shared.settings.CliSettings` (its options' defaults);
a subcommand that becomes a service then reads that service's class and passes it down
(``create_app(settings)``, ``run(settings)``). A variable that does not validate stops
the command with its name, never a traceback.
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError

from shared.settings import SettingsBase

S = TypeVar("S", bound=SettingsBase)


def read_settings(cls: type[S]) -> S:
    """``cls`` read from this process's environment; exits naming a bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        sys.exit(f"spine: invalid configuration in the environment:\n{exc}")


def check_settings(*classes: type[SettingsBase]) -> None:
    """Exit naming a bad variable of any of ``classes``: ``spine serve`` checks its
    children's before starting one, so a typo fails at once, not after a restart loop."""
    for cls in classes:
        read_settings(cls)
