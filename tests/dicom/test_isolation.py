"""A native decoder that aborts costs one upload a 400; the intake stays healthy."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGLosslessSV1

from shared import dicom
from shared.dicom.codecs import PixelGeometry, plugins
from tests.dicom import hostile
from tests.dicom.conftest import require_encoding
from tests.dicom.corpus import Corpus, convert, to_bytes


@pytest.fixture(scope="module")
def sv1(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require_encoding("jpeg_lossless_sv1")
    work = tmp_path_factory.mktemp("isolation")
    src = work / "src.dcm"
    src.write_bytes(to_bytes(hostile.small_ds()))
    return convert(src, work / "sv1.dcm", "jpeg_lossless_sv1").read_bytes()


def test_gdcm_abort_is_contained(sv1: bytes, decoder_pool: dicom.DecoderPool) -> None:
    """GDCM calls abort() on this frame (a DHT marker whose 0xFF is gone), found by fuzzing.

    decode_dicom refuses such headers before GDCM sees them; here we call the
    decoder directly in a worker to prove that an abort only fails this call.
    """
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(sv1))
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert frame[33:35] == b"\xff\xc4"
    frame[33] = 0xC3
    geometry = PixelGeometry(64, 48, 16, 16, False, "MONOCHROME2")
    with pytest.raises(dicom.NotDicomError, match="crashed"):
        decoder_pool.run(
            plugins.decode, JPEGLosslessSV1, encapsulate([bytes(frame)]), geometry
        )
    with pytest.raises(dicom.NotDicomError, match="header"):  # the pre-check catches it
        ds.PixelData = encapsulate([bytes(frame)])
        dicom.decode_dicom(to_bytes(ds), pool=decoder_pool)
    canonical, meta = dicom.decode_dicom(sv1, pool=decoder_pool)  # the next one decodes fine
    assert canonical.pixels.shape == (64, 48) and meta.transfer_syntax_uid == JPEGLosslessSV1


def test_isolated_decode_matches_in_process(sv1: bytes, decoder_pool: dicom.DecoderPool) -> None:
    isolated = dicom.decode_dicom(sv1, pool=decoder_pool)[0].pixels
    assert (dicom.decode_dicom(sv1)[0].pixels == isolated).all()


def test_worker_only_runs_decoder_functions(decoder_pool: dicom.DecoderPool) -> None:
    with pytest.raises(PermissionError):
        decoder_pool.run(Corpus.__init__, None, None)
