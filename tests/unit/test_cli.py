"""The `spine` command reads well: every option explains itself and shows its default."""

from __future__ import annotations

import argparse

import pytest

from shared.settings import CliSettings
from spine.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_has_help_showing_its_default() -> None:
    commands = _subparsers(build_parser(CliSettings()))
    assert {"serve", "gateway", "phantoms", "evaluate", "samples", "bench"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"spine {name} {action.dest}"
            assert action.help, f"{label} has no help"
            if action.default not in (None, False) and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), label


def test_defaults_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9000")
    monkeypatch.setenv("SPINE_HOST", "0.0.0.0")
    args = build_parser(CliSettings()).parse_args(["serve"])
    assert (args.host, args.port, args.classifier_port) == ("0.0.0.0", 9000, 8001)
    monkeypatch.setenv("PORT", "9100")
    assert build_parser(CliSettings()).parse_args(["detector"]).port == 9100


def test_a_bad_variable_is_named_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    with pytest.raises(SystemExit, match="gateway_port"):
        main(["serve"])


def test_serve_names_a_bad_variable_of_a_child_before_starting_any(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The gateway reads PHI_MODE, not `spine` itself: `spine serve` still refuses it first."""
    monkeypatch.setenv("PHI_MODE", "bogus")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "missing"))  # a later refusal, never a build
    with pytest.raises(SystemExit, match="phi_mode"):
        main(["serve"])
    monkeypatch.delenv("PHI_MODE")
    monkeypatch.setenv("LISTENER_MAX_ASSOCIATIONS", "0")  # the listener's own
    with pytest.raises(SystemExit, match="listener_max_associations"):
        main(["serve", "--dicom-port", "11112"])
