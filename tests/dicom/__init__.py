"""Tests of the DICOM intake (shared.dicom, gateway.pipeline.phi)."""
