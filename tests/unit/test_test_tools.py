"""tests/tools.py: a missing test tool skips locally and fails under CI, naming the package."""

from __future__ import annotations

import pytest

from tests import tools

ABSENT = "spine-no-such-tool-4711"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("yes", True), ("", False), ("0", False), ("false", False)],
)
def test_ci_is_any_truthy_value(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("CI", value)
    assert tools.in_ci() is expected


def test_unset_ci_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert tools.in_ci() is False


def test_missing_tool_skips_locally_with_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.skip.Exception, match=r"missing dcmcjpeg: apt-get install dcmtk$"):
        tools.require_tools("dcmcjpeg")
    assert tools.have_tools("dcmcjpeg") is False


def test_missing_tool_fails_under_ci_with_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PATH", "/nonexistent")
    message = r"missing dcmcjpeg, dcmdjpeg, gdcmconv: apt-get install dcmtk libgdcm-tools"
    with pytest.raises(pytest.fail.Exception, match=message):
        tools.require_tools("dcmcjpeg", "dcmdjpeg", "gdcmconv")
    with pytest.raises(pytest.fail.Exception, match="apt-get install openjph-tools"):
        tools.have_tools("ojph_expand")


def test_present_tools_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    tools.require_tools("sh")
    assert tools.have_tools("sh") is True


def test_missing_module_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=f"missing Python module {ABSENT}: pip x"):
        tools.require_module(ABSENT, "pip x")
    tools.require_module("json", "never asked")


def test_missing_network_tools_fail_under_ci_naming_the_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.peers.hosts import require_hosts

    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception,
                       match=r"missing ip, tc, iptables: apt-get install iproute2 iptables"):
        require_hosts()
    with pytest.raises(pytest.fail.Exception, match="apt-get install dnsmasq-base openssl"):
        tools.require_tools("dnsmasq", "openssl")
