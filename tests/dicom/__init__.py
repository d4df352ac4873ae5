"""Tests of the DICOM intake (gateway.dicom, gateway.phi)."""
