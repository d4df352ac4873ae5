"""Tools from outside Python that tests need: skipped locally, a failure under CI.

A developer without DCMTK can still run the rest of the suite; a CI machine without it
must not go green having checked little. So every test that needs a converter, browser
or library asks here, and the answer names the package that provides it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import NoReturn

import pytest

# The Debian package of every command a test runs (scripts/setup-test-tools.sh installs them).
DEBIAN_PACKAGES: dict[str, str] = {
    **dict.fromkeys(
        ("dcmconv", "dcmcrle", "dcmdrle", "dcmcjpeg", "dcmdjpeg", "dcmcjpls", "dcmdjpls"), "dcmtk"
    ),
    **dict.fromkeys(("dsrdump", "dcmp2pgm"), "dcmtk"),
    **dict.fromkeys(("storescu", "echoscu"), "dcmtk"),
    "dciodvfy": "dicom3tools",
    "gdcmconv": "libgdcm-tools",
    "ojph_compress": "openjph-tools",
    "ojph_expand": "openjph-tools",
    "chromium": "chromium",
    **dict.fromkeys(("prometheus", "promtool"), "prometheus"),
    # The test hosts (tests/peers/hosts.py): network namespaces, links cut and throttled,
    # a DNS server for the model services, certificates for DICOM TLS.
    **dict.fromkeys(("ip", "tc"), "iproute2"),
    "iptables": "iptables",
    "dnsmasq": "dnsmasq-base",
    "openssl": "openssl",
}

FALSE_WORDS = ("", "0", "false", "no", "off")


def in_ci() -> bool:
    """True when ``CI`` is set to anything but an empty or false-like value (``.ci/run``: 1)."""
    return os.environ.get("CI", "").strip().lower() not in FALSE_WORDS


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI fail with it instead (a skip there would hide a gap)."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing test tool fails the run)", pytrace=False)
    pytest.skip(reason)


def missing_commands(commands: Iterable[str]) -> list[str]:
    return [cmd for cmd in commands if shutil.which(cmd) is None]


def install_hint(commands: Iterable[str]) -> str:
    """``apt-get install <packages>`` for ``commands``, each package named once."""
    packages = dict.fromkeys(DEBIAN_PACKAGES.get(cmd, cmd) for cmd in commands)
    return f"apt-get install {' '.join(packages)}"


def missing_message(commands: Iterable[str]) -> str:
    missing = list(commands)
    return f"missing {', '.join(missing)}: {install_hint(missing)}"


def require_tools(*commands: str) -> None:
    """Every command on PATH, or skip (locally) / fail (CI) naming the Debian packages."""
    missing = missing_commands(commands)
    if missing:
        unavailable(missing_message(missing))


def have_tools(*commands: str) -> bool:
    """For optional extras (e.g. more fuzz seeds): False locally when missing, a failure in CI."""
    missing = missing_commands(commands)
    if missing and in_ci():
        unavailable(missing_message(missing))
    return not missing


def require_module(module: str, install: str) -> None:
    """A Python module the dev extra installs (e.g. playwright), or skip / fail."""
    try:
        __import__(module)
    except ImportError:
        unavailable(f"missing Python module {module}: {install}")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where scripts/setup-kubectl.sh puts kubectl when none is on PATH.
LOCAL_KUBECTL = os.path.join(REPO_ROOT, ".tools", "bin", "kubectl")


def kubectl() -> str | None:
    """kubectl on PATH, else the one scripts/setup-kubectl.sh installed, else None."""
    found = shutil.which("kubectl")
    if found:
        return found
    return LOCAL_KUBECTL if os.access(LOCAL_KUBECTL, os.X_OK) else None


def require_kubectl() -> str:
    """kubectl for ``kubectl kustomize``, or skip (locally) / fail (CI) naming the script."""
    found = kubectl()
    if found is None:
        unavailable("missing kubectl: run scripts/setup-kubectl.sh (make test does)")
    return found
