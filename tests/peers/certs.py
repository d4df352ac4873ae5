"""Certificates made in the test run with the openssl command: one CA, and leaves it signs.

RSA 2048 and SHA-256 (what DCMTK's BCP 195 profile in Orthanc accepts), each leaf with a
subjectAltName of the DNS names and IP addresses given, usable as server and client
certificate. Nothing is committed; every key is made fresh in a temporary folder.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.tools import require_tools

DAYS = "2"


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    run = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {run.stderr.strip()}")


@dataclass(frozen=True)
class TestCa:
    """A CA in ``folder``: ``ca.crt`` (trust it) and ``ca.key``."""

    __test__ = False  # a helper, not a test class

    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / "ca.crt"

    @classmethod
    def create(cls, folder: Path, name: str = "spine tests CA") -> TestCa:
        require_tools("openssl")
        folder.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", DAYS,
                 "-subj", f"/CN={name}", "-keyout", str(folder / "ca.key"),
                 "-out", str(folder / "ca.crt"),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return cls(folder)

    def issue(self, name: str, *, hosts: tuple[str, ...] = ()) -> Leaf:
        """A certificate for ``name`` whose subjectAltName lists ``hosts`` (names or IPs)."""
        key, csr = self.folder / f"{name}.key", self.folder / f"{name}.csr"
        cert, ext = self.folder / f"{name}.crt", self.folder / f"{name}.ext"
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(key), "-out", str(csr))
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            + (f"subjectAltName={','.join(_alt(h) for h in hosts)}\n" if hosts else "")
        )
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                 "-CAkey", str(self.folder / "ca.key"), "-CAcreateserial", "-sha256",
                 "-days", DAYS, "-extfile", str(ext), "-out", str(cert))
        return Leaf(cert, key)


def _alt(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"
