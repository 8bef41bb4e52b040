"""Writing TIFFs with their photo's metadata, and reading a TIFF's EXIF as an EXIF block.

A TIFF holds EXIF differently from a JPEG: the camera's text tags (make, model, date, artist...) are
tags of the TIFF's own first IFD, beside the ones that describe its pixels, and the exposure and GPS
tags sit in sub-IFDs that IFD points to. Neither Pillow's libtiff writer (it refuses the Exif IFD
pointer, so a camera JPEG could not be saved as a TIFF at all) nor tifffile (it writes no sub-IFDs)
does this, so every TIFF is written by tifffile here and its Exif and GPS IFDs are appended after it.
numpy + Pillow + tifffile only.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, TiffImagePlugin

log = logging.getLogger(__name__)

# EXIF's first-IFD tags that are the photo's, not the file's: description, make, model, software,
# date and time, artist, copyright (the rest of a TIFF's first IFD describes its pixels)
TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)
EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
SUB_IFDS = (EXIF_IFD, GPS_IFD)
_TIFF_XMP = 700
# a classic TIFF's offsets are 32-bit; tifffile turns to BigTIFF only far above this, so a file whose
# pixels stay under it can take sub-IFDs at its end
_CLASSIC_MAX = 2**31


def sub_ifd(exif: Image.Exif, tag: int) -> dict:
    """One sub-IFD of `exif` as tag -> value, an Exif IFD's interoperability IFD nested as a dict (as
    Pillow's writers take it; as read, it is a bare file offset that means nothing elsewhere)."""
    ifd = dict(exif.get_ifd(tag))
    if tag == EXIF_IFD and INTEROP_IFD in ifd:
        interop = dict(exif.get_ifd(INTEROP_IFD))
        if interop:
            ifd[INTEROP_IFD] = interop
        else:
            del ifd[INTEROP_IFD]
    return ifd


def exif_of_tiff(source: Image.Image | Path) -> bytes | None:
    """The EXIF of a TIFF, as the EXIF block JPEG, PNG and HEIF writers take: its text tags and its
    Exif and GPS IFDs; None where it has none. `source`: the TIFF opened by Pillow, or the path of
    one Pillow cannot open (only its first IFD and the sub-IFDs are read from the file, not its
    pixels). Damaged EXIF is left out (the photo still opens): a sub-IFD that cannot be read, or all
    of it where its first IFD cannot be read or it cannot be laid out again."""
    try:
        if not isinstance(source, Path):
            return _photo_tags(source.getexif())
        with open(source, "rb") as fh:  # the sub-IFDs are read from the file as they are asked for
            tags = Image.Exif()
            tags.load_from_fp(fh)  # a TIFF's first IFD, as Pillow reads it from a TIFF it opened
            return _photo_tags(tags)
    except Exception as exc:
        log.warning("left out the TIFF's EXIF, which could not be read: %s", exc)
        return None


def _photo_tags(src: Image.Exif) -> bytes | None:
    """Of a TIFF's first IFD, the photo's tags as an EXIF block (see `exif_of_tiff`)."""
    out = Image.Exif()
    for tag in TEXT_TAGS:
        if tag in src:
            out[tag] = src[tag]
    for tag in SUB_IFDS:
        ifd = sub_ifd(src, tag)  # Pillow reads a sub-IFD it cannot find or parse as empty
        if ifd:
            out[tag] = ifd
    return out.tobytes() if len(out) else None


def write_tiff(path: Path, samples: np.ndarray, icc: bytes | None, xmp: bytes | None, exif: bytes | None) -> None:
    """(H, W, 1-4) uint8 or uint16 samples (grey, grey + alpha, RGB, RGBA) as a deflate TIFF, with the
    ICC profile, XMP and EXIF (an upright one: its orientation is not written) it is given."""
    channels = samples.shape[2]
    tags: list[tuple] = [(_TIFF_XMP, 1, len(xmp), xmp, True)] if xmp else []
    subs: dict[int, dict] = {}
    if exif:
        text, subs = _split_exif(exif)
        tags += [(tag, 2, len(value), value, True) for tag, value in text.items()]
        if subs and samples.nbytes >= _CLASSIC_MAX:
            log.warning("%s: too big for its EXIF sub-IFDs to be appended; the camera settings are left out", path)
            subs = {}
        tags += [(tag - 1, 4, 1, 0, True) for tag in subs]  # stand-ins for the pointers: see _append_sub_ifds
    tifffile.imwrite(
        path,
        samples if channels >= 3 else samples[..., 0] if channels == 1 else samples,
        photometric="rgb" if channels >= 3 else "minisblack",
        extrasamples=("unassalpha",) if channels in (2, 4) else None,
        planarconfig="contig",
        compression="zlib",
        iccprofile=icc,
        extratags=tags,
        metadata=None,  # no JSON shape description in ImageDescription: that tag is the photo's caption
        software=False,
        byteorder="<",
    )
    if subs:
        _append_sub_ifds(path, subs)


def _split_exif(exif: bytes) -> tuple[dict[int, bytes], dict[int, dict]]:
    """EXIF's text tags (NUL-terminated, as TIFF's ASCII wants) and its non-empty sub-IFDs."""
    tags = Image.Exif()
    try:
        tags.load(exif)
    except Exception as exc:
        log.warning("left out EXIF that could not be read: %s", exc)
        return {}, {}
    text = {}
    for tag in TEXT_TAGS:
        value = tags.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.strip("\x00"):
            text[tag] = value.rstrip("\x00").encode("utf-8") + b"\x00"
    subs = {}
    for tag in SUB_IFDS:
        try:  # laid out once here, so that one Pillow cannot write again is known before the file is
            ifd = sub_ifd(tags, tag)
            _ifd_block(ifd, 0)
        except Exception as exc:
            log.warning("left out a damaged EXIF IFD 0x%04x: %s", tag, exc)
            continue
        if ifd:
            subs[tag] = ifd
    return text, subs


def _ifd_block(values: dict, offset: int) -> bytes:
    """An IFD of `values` laid out to sit at `offset` in a little-endian TIFF (as written above)."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for code, value in values.items():
        ifd[code] = value
    return ifd.tobytes(offset)


def _append_sub_ifds(path: Path, subs: dict[int, dict]) -> None:
    """Write each IFD at the file's end (word-aligned, its values' offsets counted from the file's
    start, as Pillow lays them out for a given offset) and turn its stand-in into the pointer to it.

    tifffile will not write the pointer tags themselves, so each went in as the (unused) code just
    below it: the entry keeps its place in the IFD's ascending order once its code is raised by one."""
    with tifffile.TiffFile(path) as tf:
        entries = {tag: tf.pages[0].tags[tag - 1].offset for tag in subs}
    with open(path, "r+b") as fh:
        for tag, values in subs.items():
            end = fh.seek(0, 2)
            if end % 2:
                fh.write(b"\x00")
                end += 1
            fh.write(_ifd_block(values, end))
            fh.seek(entries[tag])  # classic entry: code, type, count, then the value itself
            fh.write(struct.pack("<HHII", tag, 4, 1, end))
