"""The secrets `spine serve` hands its services when the operator set none.

- ``PSEUDONYM_SECRET``: a per-install secret, generated once into
  ``<cache root>/pseudonym_secret`` (mode 0600) and reused, so pseudonyms stay stable
  across restarts of this installation yet cannot be recomputed from our docs.
- ``INTERNAL_TOKEN``: when the services bind beyond loopback, a fresh random token for
  this run (only the children need it; the model services refuse to start without one).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from shared.lockdown import is_loopback, weak_secret
from shared.paths import cache_root
from shared.settings import CliSettings, PseudonymSecretSettings

SECRET_FILE = "pseudonym_secret"


def install_secret(root: Path) -> tuple[str, bool]:
    """``(secret, created)``: the per-install secret under ``root``, made if missing."""
    path = root / SECRET_FILE
    if path.is_file():
        value = path.read_text().strip()
        if not weak_secret(value):
            return value, False
    root.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # O_EXCL-free but 0600 from the first byte: the secret is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)
    return value, True


def lock_children_env(env: dict[str, str], host: str, settings: CliSettings) -> dict[str, str]:
    """``env`` with a pseudonym secret and, beyond loopback, an internal token filled in,
    where ``settings`` (``spine serve``'s, read from the environment ``env`` copies) lack them."""
    env = dict(env)
    default_secret = PseudonymSecretSettings.model_fields["pseudonym_secret"].default
    if settings.pseudonym_secret == default_secret:
        root = cache_root(settings)
        value, created = install_secret(root)
        env["PSEUDONYM_SECRET"] = value
        if created:
            print(f"[spine] PSEUDONYM_SECRET is not set: generated a per-install secret in "
                  f"{root / SECRET_FILE} (mode 0600); keep that file to keep pseudonyms "
                  "stable, or set PSEUDONYM_SECRET", flush=True)
    if not is_loopback(host) and settings.internal_token is None:
        env["INTERNAL_TOKEN"] = secrets.token_urlsafe(32)
        print(f"[spine] binding {host}: generated an INTERNAL_TOKEN for this run; the model "
              "services refuse calls without it", flush=True)
    return env
