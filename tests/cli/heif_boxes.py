"""Build the HEIF a phone writes beside its picture: an auxiliary image (an iPhone's HDR gain map, a
depth map), which pillow-heif reads but cannot write. It rewrites a two-image HEIF's boxes (ISO/IEC
23008-12) so that the second image becomes an auxiliary image of the first: an 'auxl' reference in
'iref', an 'auxC' property naming its type, and the 'iloc' offsets moved by what 'meta' grew."""

from __future__ import annotations

import struct
from collections.abc import Iterator

_OFFSET = {4: ">I", 8: ">Q"}


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _children(b: bytes, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
    off = start
    while off < end:
        (size,) = struct.unpack_from(">I", b, off)
        yield b[off + 4 : off + 8], b[off : off + size]
        off += size


def _ipma_with(ipma: bytes, item: int, prop: int) -> bytes:
    """The item-property association box with property number `prop` added to `item` (version 0,
    one-byte indices, as libheif writes small files)."""
    head = ipma[8:12]
    assert head[0] == 0 and not head[3] & 1, "expected a version-0 ipma with 7-bit indices"
    (count,) = struct.unpack_from(">I", ipma, 12)
    off, out = 16, []
    for _ in range(count):
        iid, n = struct.unpack_from(">HB", ipma, off)
        props = list(ipma[off + 3 : off + 3 + n]) + ([prop] if iid == item else [])
        out.append(struct.pack(">HB", iid, len(props)) + bytes(props))
        off += 3 + n
    return _box(b"ipma", head + struct.pack(">I", count) + b"".join(out))


def _iloc_moved(iloc: bytes, by: int) -> bytes:
    """The item-location box with every absolute offset (base offsets, else extent offsets) moved."""
    b = bytearray(iloc)
    version, off_size, base_size = b[8], b[12] >> 4, b[13] >> 4
    len_size, idx_size = b[12] & 15, (b[13] & 15) if version in (1, 2) else 0
    p = 14
    wide = version == 2
    (items,) = struct.unpack_from(">I" if wide else ">H", b, p)
    p += 4 if wide else 2
    for _ in range(items):
        p += (4 if wide else 2) + (2 if version in (1, 2) else 0) + 2  # id, construction method, data ref
        base = 0
        if base_size:
            (base,) = struct.unpack_from(_OFFSET[base_size], b, p)
            if base:
                struct.pack_into(_OFFSET[base_size], b, p, base + by)
            p += base_size
        (extents,) = struct.unpack_from(">H", b, p)
        p += 2
        for _ in range(extents):
            p += idx_size
            if off_size and not base:
                (v,) = struct.unpack_from(_OFFSET[off_size], b, p)
                struct.pack_into(_OFFSET[off_size], b, p, v + by)
            p += off_size + len_size
    return bytes(b)


def with_auxiliary_image(heif: bytes, urn: str) -> bytes:
    top = dict(_children(heif, 0, len(heif)))
    meta = top[b"meta"]
    start = heif.index(meta)
    parts = dict(_children(meta, 12, len(meta)))
    props = dict(_children(parts[b"iprp"], 8, len(parts[b"iprp"])))
    ipco = props[b"ipco"]
    n_props = sum(1 for _ in _children(ipco, 8, len(ipco)))
    ipco = _box(b"ipco", ipco[8:] + _box(b"auxC", b"\0\0\0\0" + urn.encode() + b"\0"))
    main, aux = 1, 2  # libheif numbers a file's images from 1, in the order written
    parts[b"iprp"] = _box(b"iprp", ipco + _ipma_with(props[b"ipma"], aux, n_props + 1))
    parts[b"iref"] = _box(b"iref", b"\0\0\0\0" + _box(b"auxl", struct.pack(">HHH", aux, 1, main)))

    def build() -> bytes:
        return _box(b"meta", meta[8:12] + b"".join(parts.values()))

    grow = len(build()) - len(meta)
    parts[b"iloc"] = _iloc_moved(parts[b"iloc"], grow)
    return heif[:start] + build() + heif[start + len(meta) :]
