"""The ``spine`` command's settings: the defaults of its options (the options win), and
what ``spine serve`` needs to start the other processes with their environments.

Read once by ``spine.cli.main``. A subcommand that becomes a service (``spine gateway``,
``spine classifier|detector``, ``spine dicom-listener``) then reads that process's own
class once and passes it down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from shared.settings.base import CommonSettings
from shared.settings.sections import (
    BundleSettings,
    ListenerEndpointSettings,
    PseudonymSecretSettings,
)


class CliSettings(
    CommonSettings, BundleSettings, PseudonymSecretSettings, ListenerEndpointSettings
):
    """Addresses and ports of ``spine``'s services, ``spine serve``'s split of the cores,
    and the tools' defaults (bench, Triton)."""

    # --- where `spine` binds its services ------------------------------------------------
    spine_host: str = Field("127.0.0.1", description="address the services of `spine` bind")
    gateway_port: int = Field(8000, ge=1, le=65535, description="gateway port of `spine serve`")
    classifier_port: int = Field(
        8001, ge=1, le=65535, description="classifier port of `spine serve`"
    )
    detector_port: int = Field(8002, ge=1, le=65535, description="detector port of `spine serve`")
    port: int | None = Field(
        None, ge=1, le=65535,
        description="port of `spine gateway|classifier|detector` run alone; None = 8000/8001/8002",
    )

    # --- `spine serve`'s split of the cores (docs/BENCHMARKS.md "Levers") -----------------
    classifier_threads: int = Field(
        0, ge=0, description="intra-op threads of the classifier service under `spine serve`; "
        "0 = half the cores",
    )
    detector_threads: int = Field(
        0, ge=0, description="intra-op threads of each detector replica under `spine serve`; "
        "0 = half the cores",
    )
    detector_replicas: int = Field(
        1, ge=1, le=16, description="detector processes `spine serve` starts (the gateway "
        "balances by requests in flight); extra ones listen on free loopback ports",
    )

    # --- tools: `spine bench`, `spine triton`, `spine reading-room` ---------------------
    spine_api_key: SecretStr | None = Field(
        None, description="API key `spine bench --gateway` sends (X-API-Key)"
    )
    reading_room_users: SecretStr | None = Field(
        None, description="`spine reading-room`: Orthanc's HTTP users as user:password"
        "[,user:password] (basic auth on Orthanc and the viewer); required beyond loopback",
    )
    triton_venv: Path | None = Field(
        None, description="environment with the nvidia-pytriton wheel "
        "(scripts/setup-triton.sh); None = .venv-triton at the project root",
    )
    triton_backend_dir: Path | None = Field(
        None, description="Triton backends folder holding onnxruntime/ (libtriton_onnxruntime.so "
        "and its libonnxruntime.so, e.g. /opt/tritonserver/backends of NVIDIA's tritonserver "
        "24.10 image), for models exported with --backend onnxruntime; None = the wheel's, "
        "which has only python/ (it runs the python flavour)",
    )
