"""Reader for IDX files, the binary format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order.
Files may be gzip-compressed. Only numpy is used, so reading needs no downloads
and no extra packages.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX type code -> numpy dtype (multi-byte types are big-endian in the file).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dtype: code for code, dtype in _IDX_DTYPES.items()}


def read_idx(path: str | Path, *, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a numpy array in native byte order.

    Raises ``ValueError`` naming the file if it is corrupt, truncated, or has an
    unexpected number of dimensions.
    """
    path = Path(path)
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"IDX file {path}: cannot read it ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"IDX file {path}: bad magic number (not an IDX file, or corrupt)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"IDX file {path}: unknown data type code 0x{code:02x} in the magic number")
    if ndim == 0:
        raise ValueError(f"IDX file {path}: zero dimensions in the magic number")
    if expect_ndim is not None and ndim != expect_ndim:
        raise ValueError(f"IDX file {path}: {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path}: header says shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes (truncated or corrupt)"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file; gzip it when the name ends in ``.gz``.

    Used by tests and by anyone converting their own data to the MNIST format.
    """
    path = Path(path)
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big not in _DTYPE_CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; allowed: uint8, int8, int16, int32, float32, float64")
    header = bytes([0, 0, _DTYPE_CODES[big], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=big).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    path.write_bytes(payload)
    return path


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=fh) as gz:
                return gz.read()
        return fh.read()
