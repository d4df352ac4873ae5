"""Reduced-resolution JPEG 2000 decoding through OpenJPEG's C API (ctypes).

Why this exists: the canonical image is at most 1024 pixels on its long side,
while a VinDr radiograph is ~2455 x 1606. JPEG 2000 stores an image as a
wavelet pyramid, so OpenJPEG can stop the inverse transform early and return
the image at 1/2, 1/4, ... resolution (``opj_set_decoded_resolution_factor``),
which skips most of the decode work. pylibjpeg-openjpeg does not expose that
option, and glymur only reads from files (uploads never touch the disk), so
this module binds the few OpenJPEG calls it needs and feeds the codestream
from memory through stream callbacks.

The shared library is looked up in Pillow's wheel (it bundles a recent
OpenJPEG) and then on the system (Debian: ``libopenjp2-7``). When neither is
there, :func:`available` is False and the caller falls back to a full decode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import cache

import numpy as np

__all__ = ["J2kError", "available", "decode", "library_version"]

_OPJ_CODEC_J2K = 0
_OPJ_CODEC_JP2 = 2
_STREAM_CHUNK = 1 << 20
# opj_dparameters_t is ~8.3 KiB in OpenJPEG 2.x; we never touch its fields,
# only let the library fill in defaults, so an oversized buffer is enough.
_DPARAMS_SIZE = 1 << 15


class J2kError(Exception):
    """The codestream could not be decoded (message never carries file content)."""


class _ImageComp(ctypes.Structure):
    # opj_image_comp_t, unchanged since OpenJPEG 2.0 (bpp deprecated, still present)
    _fields_ = [
        ("dx", ctypes.c_uint32),
        ("dy", ctypes.c_uint32),
        ("w", ctypes.c_uint32),
        ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("prec", ctypes.c_uint32),
        ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32),
        ("resno_decoded", ctypes.c_uint32),
        ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    # opj_image_t
    _fields_ = [
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("x1", ctypes.c_uint32),
        ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_ImageComp)),
        ("icc_profile_buf", ctypes.c_void_p),
        ("icc_profile_len", ctypes.c_uint32),
    ]


_READ_FN = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)
_MSG_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)


@_MSG_FN
def _quiet(_msg: bytes, _data: int) -> None:
    """Swallow OpenJPEG's messages: they may quote header values, and we report our own."""


def _candidates() -> list[str]:
    """Shared-library paths to try, newest bundled copy first."""
    paths: list[str] = []
    try:
        import PIL

        libs = os.path.join(os.path.dirname(os.path.dirname(PIL.__file__)), "pillow.libs")
        paths += sorted(glob.glob(os.path.join(libs, "libopenjp2*.so*")), reverse=True)
    except ImportError:
        pass
    found = ctypes.util.find_library("openjp2")
    if found:
        paths.append(found)
    paths += ["libopenjp2.so.7", "libopenjp2.dylib", "openjp2.dll"]
    return paths


@cache
def _lib() -> ctypes.CDLL | None:
    """Load libopenjp2 once and declare the signatures we call (None when absent)."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    """Give every function we use its C signature (64-bit pointers must not be truncated)."""
    vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32
    lib.opj_version.restype = ctypes.c_char_p
    lib.opj_create_decompress.restype = vp
    lib.opj_create_decompress.argtypes = [ctypes.c_int]
    lib.opj_set_default_decoder_parameters.argtypes = [vp]
    lib.opj_setup_decoder.restype = i32
    lib.opj_setup_decoder.argtypes = [vp, vp]
    lib.opj_codec_set_threads.restype = i32
    lib.opj_codec_set_threads.argtypes = [vp, ctypes.c_int]
    for setter in ("opj_set_info_handler", "opj_set_warning_handler", "opj_set_error_handler"):
        getattr(lib, setter).restype = i32
        getattr(lib, setter).argtypes = [vp, _MSG_FN, vp]
    lib.opj_stream_create.restype = vp
    lib.opj_stream_create.argtypes = [ctypes.c_size_t, i32]
    lib.opj_stream_set_read_function.argtypes = [vp, _READ_FN]
    lib.opj_stream_set_skip_function.argtypes = [vp, _SKIP_FN]
    lib.opj_stream_set_seek_function.argtypes = [vp, _SEEK_FN]
    lib.opj_stream_set_user_data.argtypes = [vp, vp, vp]
    lib.opj_stream_set_user_data_length.argtypes = [vp, ctypes.c_uint64]
    lib.opj_stream_destroy.argtypes = [vp]
    lib.opj_read_header.restype = i32
    lib.opj_read_header.argtypes = [vp, vp, ctypes.POINTER(ctypes.POINTER(_Image))]
    lib.opj_set_decoded_resolution_factor.restype = i32
    lib.opj_set_decoded_resolution_factor.argtypes = [vp, u32]
    lib.opj_decode.restype = i32
    lib.opj_decode.argtypes = [vp, vp, ctypes.POINTER(_Image)]
    lib.opj_end_decompress.restype = i32
    lib.opj_end_decompress.argtypes = [vp, vp]
    lib.opj_destroy_codec.argtypes = [vp]
    lib.opj_image_destroy.argtypes = [ctypes.POINTER(_Image)]


def available() -> bool:
    """Whether reduced-resolution decoding can be used on this install."""
    return _lib() is not None


def library_version() -> str | None:
    """OpenJPEG version string of the loaded library, for /health and bug reports."""
    lib = _lib()
    return lib.opj_version().decode("ascii", "replace") if lib else None


class _MemoryStream:
    """OpenJPEG input stream callbacks reading from an in-memory buffer."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        self._pos = 0
        self.read = _READ_FN(self._read)
        self.skip = _SKIP_FN(self._skip)
        self.seek = _SEEK_FN(self._seek)

    def _read(self, buf: int, n: int, _user: int) -> int:
        remaining = len(self._data) - self._pos
        if remaining <= 0:
            return ctypes.c_size_t(-1).value  # OpenJPEG's end-of-stream marker
        k = min(n, remaining)
        ctypes.memmove(buf, self._addr + self._pos, k)
        self._pos += k
        return k

    def _skip(self, n: int, _user: int) -> int:
        new = min(max(self._pos + n, 0), len(self._data))
        moved = new - self._pos
        self._pos = new
        return moved

    def _seek(self, n: int, _user: int) -> int:
        if 0 <= n <= len(self._data):
            self._pos = n
            return 1
        return 0


def decode(
    codestream: bytes,
    *,
    reduce: int = 0,
    expected_size: tuple[int, int] | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Decode the first component of a J2K/JP2 stream at 1/2**reduce resolution.

    Returns an int32 array (OpenJPEG's native sample type; the caller narrows
    it). ``expected_size`` (rows, columns) is checked against the header
    *before* any pixel buffer is allocated, so a codestream that claims a
    huge image cannot make us allocate it. ``threads`` 0 means one per core,
    at most 4.
    """
    lib = _lib()
    if lib is None:
        raise J2kError("OpenJPEG shared library not available")
    fmt = _OPJ_CODEC_JP2 if codestream[4:8] == b"jP  " else _OPJ_CODEC_J2K
    codec = lib.opj_create_decompress(fmt)
    if not codec:
        raise J2kError("could not create an OpenJPEG decoder")
    stream = None
    image = ctypes.POINTER(_Image)()
    src = _MemoryStream(codestream)
    try:
        _set_up(lib, codec, threads)
        stream = _open_stream(lib, src, len(codestream))
        if not lib.opj_read_header(stream, codec, ctypes.byref(image)) or not image:
            raise J2kError("the JPEG 2000 header could not be read")
        _check_header(image.contents, expected_size)
        if reduce and not lib.opj_set_decoded_resolution_factor(codec, reduce):
            raise J2kError("the requested resolution level is not in the codestream")
        if not lib.opj_decode(codec, stream, image) or not lib.opj_end_decompress(codec, stream):
            raise J2kError("the JPEG 2000 codestream is corrupt or truncated")
        return _first_component(image.contents)
    finally:
        if stream:
            lib.opj_stream_destroy(stream)
        lib.opj_destroy_codec(codec)
        if image:
            lib.opj_image_destroy(image)


def _set_up(lib: ctypes.CDLL, codec: int, threads: int) -> None:
    """Silence the codec's messages, give it default parameters and its threads."""
    for setter in ("opj_set_info_handler", "opj_set_warning_handler", "opj_set_error_handler"):
        getattr(lib, setter)(codec, _quiet, None)
    params = ctypes.create_string_buffer(_DPARAMS_SIZE)
    lib.opj_set_default_decoder_parameters(params)
    if not lib.opj_setup_decoder(codec, params):
        raise J2kError("could not set up the OpenJPEG decoder")
    lib.opj_codec_set_threads(codec, threads or min(4, os.cpu_count() or 1))


def _open_stream(lib: ctypes.CDLL, src: _MemoryStream, length: int) -> int:
    """An OpenJPEG input stream reading `src` (the caller destroys it)."""
    stream = lib.opj_stream_create(_STREAM_CHUNK, 1)
    if not stream:
        raise J2kError("could not create an OpenJPEG stream")
    lib.opj_stream_set_read_function(stream, src.read)
    lib.opj_stream_set_skip_function(stream, src.skip)
    lib.opj_stream_set_seek_function(stream, src.seek)
    lib.opj_stream_set_user_data(stream, None, None)
    lib.opj_stream_set_user_data_length(stream, length)
    return stream  # type: ignore[no-any-return]


def _check_header(head: _Image, expected_size: tuple[int, int] | None) -> None:
    """Refuse an image of another size than Rows/Columns, or without components."""
    rows, cols = head.y1 - head.y0, head.x1 - head.x0
    if expected_size is not None and (rows, cols) != expected_size:
        raise J2kError("the JPEG 2000 image size does not match Rows/Columns")
    if head.numcomps < 1:
        raise J2kError("the JPEG 2000 codestream has no components")


def _first_component(image: _Image) -> np.ndarray:
    """A copy of the decoded samples of component 0 (int32)."""
    comp = image.comps[0]
    if not comp.data or comp.w == 0 or comp.h == 0:
        raise J2kError("the JPEG 2000 decoder returned no samples")
    view = np.ctypeslib.as_array(comp.data, shape=(int(comp.h), int(comp.w)))
    return view.copy()
