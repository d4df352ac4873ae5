"""Tests of the DICOM intake (shared.dicom, gateway.phi)."""
