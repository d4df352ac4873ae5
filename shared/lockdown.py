"""What a service refuses to start with when it binds beyond loopback.

On ``127.0.0.1`` only this machine can call a service, so a missing internal token or
the documented default pseudonym secret harms nobody. On any other address the
network can: a model service without ``INTERNAL_TOKEN`` would run inference for
anyone, and a public or short ``PSEUDONYM_SECRET`` lets whoever read our docs recompute
the pseudonym of every short, guessable patient ID. So :func:`exposure_problems` lists
what is wrong and the ``spine`` command refuses to start, naming each variable.
Torch-free.
"""

from __future__ import annotations

import ipaddress

from shared.settings import CommonSettings, GatewaySettings, PhiMode

# Long enough that guessing is out of reach (``secrets.token_urlsafe(32)`` gives 43).
MIN_SECRET_CHARS = 16
# Values published in this repository (the settings' default, deploy/kubernetes/base/secrets.env,
# docs) or typical of copy-pasted examples: as good as no secret.
KNOWN_PLACEHOLDERS = frozenset({
    "change-me", "changeme", "change_me", "secret", "password", "token", "test",
    "replace-with-a-long-random-token", "replace-with-a-long-random-secret",
})
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "replace-with", "replace-me", "your-", "<")
MODEL_SERVICES = frozenset({"classifier", "detector"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; every other name or address is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def weak_secret(value: str) -> str | None:
    """Why ``value`` is no secret (placeholder, too short), or None when it will do."""
    lowered = value.strip().lower()
    if lowered in KNOWN_PLACEHOLDERS or lowered.startswith(PLACEHOLDER_PREFIXES):
        return "a published placeholder"
    if len(value.strip()) < MIN_SECRET_CHARS:
        return f"shorter than {MIN_SECRET_CHARS} characters"
    return None


def exposure_problems(service: str, host: str, settings: CommonSettings) -> list[str]:
    """What stops ``service`` from binding ``host``; empty on loopback or when all is set.

    ``settings`` is the service's own: a gateway's are checked for the pseudonym secret too.
    """
    if is_loopback(host):
        return []
    problems = []
    token = settings.internal_token.get_secret_value() if settings.internal_token else ""
    if service in MODEL_SERVICES and not token:
        problems.append(
            "INTERNAL_TOKEN is not set: anyone on the network could run inference "
            "(`spine serve` generates one for its services)"
        )
    elif token and (why := weak_secret(token)):
        problems.append(f"INTERNAL_TOKEN is {why}")
    if isinstance(settings, GatewaySettings) and settings.phi_mode is PhiMode.PSEUDONYMIZE:
        why = weak_secret(settings.pseudonym_secret)
        if why:
            problems.append(
                f"PSEUDONYM_SECRET is {why}: pseudonyms of short patient IDs could be "
                "recomputed (`spine serve` keeps a per-install secret in the cache folder)"
            )
    return problems


def refusal_message(service: str, host: str, problems: list[str]) -> str:
    """The start-up error: what is wrong, and how to fix it (or stay on loopback)."""
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return (
        f"spine {service}: refusing to bind {host} (beyond loopback):\n{lines}\n"
        "Set each to a long random value (e.g. `python -c \"import secrets; "
        "print(secrets.token_urlsafe(32))\"`), or bind 127.0.0.1."
    )
