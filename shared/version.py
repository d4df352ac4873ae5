"""The software version, read once from the installed package's metadata.

One source (``pyproject.toml``'s ``version``) for the API's OpenAPI document, the
model-bundle facts and every DICOM result object's Software Versions, so a release
changes one line.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "spine-lesion-service"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


SOFTWARE_VERSION = _installed_version()
