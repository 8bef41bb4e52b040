"""Reading and writing images for restoration, keeping what the user cares about.

numpy + Pillow + OpenCV only (no torch, no Qt): the CLI, the worker tools and the app share it.
- 8-bit and 16-bit per channel (16-bit PNG through OpenCV, TIFF through tifffile (`tiff_file`), which keep
  the depth; Pillow reads 8-bit formats, EXIF orientation and the ICC profile);
- alpha is split off and passed through untouched; palette images become RGB; CMYK is converted to
  sRGB through its own profile (``converted`` says so: such a file is never written over);
- grey images are restored as RGB (the network's input) and written back grey, with their own
  grey ICC profile (an RGB file never carries a grey profile: viewers reject or misrender it);
- EXIF orientation is applied on read (pixels upright) and the tag dropped on write;
- of an animation or a multi-page TIFF only the first frame is read; ``frames`` says how many there
  are, so callers can say so and never write one frame over the file that held them all;
- ICC profiles are carried to PNG, JPEG, TIFF, WebP, HEIF and AVIF outputs;
- phone photos: HEIF/HEIC (iPhones' default) through pillow-heif, 10- and 12-bit ones at 16 bits, and
  AVIF through Pillow; both are written too (a 16-bit image to HEIF as 10-bit).
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import tifffile
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from .atomic import replacing
from .colour_profile import hdr_coding, profile_for_nclx
from .errors import ImageError
from .tiff_file import exif_of_tiff, write_tiff

pillow_heif.register_heif_opener()  # Pillow opens and saves HEIF/HEIC from here on, in every process


@dataclass(frozen=True)
class FileType:
    """A kind of image file: the one table the CLI, the app's dialogs and batch all read."""

    label: str
    suffixes: tuple[str, ...]
    writer: str | None  # Pillow's format name for writing; None: read only
    lossy: bool = False  # takes a quality
    sixteen_bit: bool = False  # keeps 16-bit pixels (HEIF as 10-bit)


FILE_TYPES = (
    FileType("PNG", (".png",), "PNG", sixteen_bit=True),
    FileType("JPEG", (".jpg", ".jpeg"), "JPEG", lossy=True),
    FileType("TIFF", (".tif", ".tiff"), "TIFF", sixteen_bit=True),
    FileType("WebP", (".webp",), "WEBP", lossy=True),
    FileType("HEIF", (".heic", ".heif"), "HEIF", lossy=True, sixteen_bit=True),
    FileType("AVIF", (".avif",), "AVIF", lossy=True),
    FileType("BMP", (".bmp",), None),
    FileType("GIF", (".gif",), None),
)
READ_SUFFIXES = frozenset(s for t in FILE_TYPES for s in t.suffixes)
WRITE_TYPES = tuple(t for t in FILE_TYPES if t.writer)
WRITE_FORMATS = {s: t.writer for t in WRITE_TYPES for s in t.suffixes}
_SIXTEEN_BIT = {t.writer for t in WRITE_TYPES if t.sixteen_bit}
_LOSSY = {t.writer for t in WRITE_TYPES if t.lossy}
DEFAULT_MAX_PIXELS = 200_000_000
# tagged on what a CMYK file becomes, so viewers and editors read its colours as they were converted
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
Image.MAX_IMAGE_PIXELS = None  # our own limit below gives a clearer message than Pillow's bomb error


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], untouched on the way back
    bit_depth: int  # 8 or 16
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source_format: str = ""
    info: dict = field(default_factory=dict)  # e.g. bits_per_sample: a 10-bit HEIF's 10 (bit_depth is 16)
    grey: bool = False  # one colour channel in the file: written back grey
    frames: int = 1  # frames or pages in the file (animation, multi-page TIFF): only the first is read
    converted: str = ""  # the file's colour model when it was converted on read ("CMYK"): written as RGB
    transfer: str = "srgb"  # "linear" when its ICC profile's tone curve is gamma 1.0 (see `icc_transfer`)
    extras: tuple[str, ...] = ()  # what else the file holds beside its pixels (a HEIF's depth map, ...)
    xmp: bytes | None = None  # the XMP packet (keywords, rating, caption, edits): written back with the result

    def caveat(self, name: str) -> str | None:
        """What the restored image does not hold of the file ``name`` (None: nothing is lost), the one
        reason a result may not be written over its source."""
        if self.frames > 1:
            return f"{name} holds {self.frames} frames or pages; only the first is restored"
        if self.converted:
            how = "with its colour profile" if self.info.get("converted_with_profile") else "without a profile"
            return f"{name} is {self.converted}; it is restored and written as RGB (converted {how})"
        if self.extras:
            return f"{name} also holds {' and '.join(self.extras)}, which the restored image does not keep"
        return None

    def pixels(self) -> tuple[np.ndarray, np.ndarray | None, bool]:
        return self.rgb, self.alpha, self.grey

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _check_pixels(w: int, h: int, path: Path, max_pixels: int) -> None:
    if w < 1 or h < 1:
        raise ImageError(f"{path.name} has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{path.name} is {w}x{h} = {w * h / 1e6:.0f} MP, above the limit of {max_pixels / 1e6:.0f} MP",
            "raise the limit with --max-pixels, or crop the image first",
        )


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    img = _read_image(Path(path), max_pixels)
    img.transfer = icc_transfer(img.icc_profile)
    return img


def _read_image(path: Path, max_pixels: int) -> LoadedImage:
    if not path.is_file():
        raise ImageError(f"{path} does not exist or is not a file")
    try:
        # Pillow warns "Truncated File Read" on a damaged TIFF: our one error says so instead
        with warnings.catch_warnings(action="ignore", category=UserWarning), Image.open(path) as im:
            w, h = im.size
            _check_pixels(w, h, path, max_pixels)
            fmt = im.format or ""
            icc = im.info.get("icc_profile")
            exif = im.info.get("exif") or (exif_of_tiff(im) if fmt == "TIFF" else None)
            xmp = _xmp_bytes(im.info.get("xmp"))
            orientation = im.getexif().get(0x0112, 1)
            frames = max(1, int(getattr(im, "n_frames", 1)))
            mode = im.mode
            if mode == "CMYK":  # print files and stock photos: restored in sRGB, the caveat says so
                rgb_im, profiled = _cmyk_to_srgb(ImageOps.exif_transpose(im), icc)
                rgb, _, _ = _from_pil(rgb_im)
                return LoadedImage(rgb, None, 8, SRGB_ICC, exif, fmt, {"converted_with_profile": profiled},
                                   frames=frames, converted="CMYK", xmp=xmp)
            heif_bits = int(im.info.get("bit_depth") or 8) if fmt == "HEIF" else 0
            sixteen = (mode in ("I;16", "I;16B", "I;16L", "I") or (fmt in ("PNG", "TIFF") and _is_16bit(path, im))
                       or heif_bits > 8)
            extras = _heif_extras(im.info) if fmt == "HEIF" else _jpeg_extras(im.info) if fmt == "JPEG" else ()
            if icc is None and fmt in ("HEIF", "AVIF"):  # colours named by code (nclx): as a profile
                icc = profile_for_nclx(im.info.get("nclx_profile"))
            if not sixteen:
                im.load()
                rgb, alpha, grey = _from_pil(ImageOps.exif_transpose(im))
                return LoadedImage(rgb, alpha, 8, icc, exif, fmt, grey=grey, frames=frames, extras=extras, xmp=xmp)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        if _is_tiff(path):  # e.g. 16-bit grey with alpha, as GIMP writes it
            img = _read_tiff(path, max_pixels)
            img.exif = exif_of_tiff(path)
            return img
        raise ImageError(f"cannot read {path.name}: {exc}", "the file is damaged or not an image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read {path.name}: {exc}", "the file is damaged or not an image") from exc
    if fmt == "TIFF":  # never OpenCV: it scrambles planar RGB and drops grey's alpha without a word
        rgb, alpha, grey = _read_tiff(path, max_pixels).pixels()
    elif fmt == "HEIF":  # 10/12-bit, as phones shoot HDR; libheif has turned it upright already
        rgb, alpha, grey = _read_heif_deep(path)
    else:
        rgb, alpha, grey = _read_16bit(path)
    rgb, alpha = _orient(rgb, orientation), None if alpha is None else _orient(alpha, orientation)
    # a 10/12-bit HEIF is held at 16 bits; what the file had is told, not "16-bit"
    info = {"bits_per_sample": heif_bits} if heif_bits else {}
    return LoadedImage(rgb, alpha, 16, icc, exif, fmt, info, grey=grey, frames=frames, extras=extras, xmp=xmp)


# Auxiliary images a phone stores beside a HEIF's picture, by the type URN's telling part: an iPhone
# photo has an HDR gain map (its bright highlights on HDR screens), Portrait mode a depth map and mattes.
_HEIF_AUX_NAMES = (("hdrgainmap", "an HDR gain map"), ("depth", "a depth map"), ("disparity", "a depth map"),
                   ("auxid:2", "a depth map"), ("matte", "portrait mattes"))


def _heif_extras(info: dict) -> tuple[str, ...]:
    """What a HEIF holds besides its primary image's pixels and thumbnails, as pillow-heif lists it."""
    found: list[str] = []
    hdr = hdr_coding(info.get("nclx_profile"))
    if hdr:  # PQ / HLG: the result is written without that coding, so it would not look the same
        found.append(f"HDR colour coding ({hdr})")
    urns = list((info.get("aux") or {}).keys()) + ["depth"] * bool(info.get("depth_images"))
    for urn in urns:
        name = next((label for key, label in _HEIF_AUX_NAMES if key in urn.lower()), "an auxiliary image")
        if name not in found:
            found.append(name)
    return tuple(found)


def _jpeg_extras(info: dict) -> tuple[str, ...]:
    """An Ultra HDR JPEG (Android's camera format since 14) holds its HDR gain map as a second image
    behind the first (Multi-Picture Format), which Pillow leaves unread as a plain JPEG: say so."""
    mp = info.get("mp")
    if not isinstance(mp, bytes) or _mpf_images(mp) < 2:
        return ()
    return ("an HDR gain map",) if b"hdrgm" in (info.get("xmp") or b"") else ("more images behind the first",)


def _mpf_images(mp: bytes) -> int:
    """NumberOfImages of a JPEG's MPF index (CIPA DC-007): a TIFF header, then an IFD; 1 if unreadable."""
    try:
        e = "<" if mp[:2] == b"II" else ">"
        (ifd,) = struct.unpack_from(e + "I", mp, 4)
        (n,) = struct.unpack_from(e + "H", mp, ifd)
        for i in range(n):
            tag, _kind, _count, value = struct.unpack_from(e + "HHII", mp, ifd + 2 + 12 * i)
            if tag == 0xB001:
                return int(value)
    except struct.error:
        pass
    return 1


def _read_heif_deep(path: Path) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """A 10- or 12-bit HEIF at full depth: pillow-heif hands the samples shifted up into 16 bits, so
    they are shifted back and scaled by their own maximum (1023 is white, not 1023/1024 of it)."""
    try:
        heif = pillow_heif.open_heif(path, convert_hdr_to_8bit=False)
        a = np.asarray(heif)
        depth = int(heif.info.get("bit_depth") or 16)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ImageError(f"cannot read the {path.name} pixels: {exc}", "the file may be damaged") from exc
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype == np.uint16 and 8 < depth < 16:
        a = (a >> (16 - depth)).astype(np.float32) / ((1 << depth) - 1)
    else:
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    alpha = None
    if a.shape[2] in (2, 4):
        alpha, a = a[..., -1], a[..., :-1]
    grey = a.shape[2] == 1
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if grey else a), alpha, grey


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_tiff(path: Path, max_pixels: int) -> LoadedImage:
    """A TIFF Pillow cannot open, through tifffile: 8- or 16-bit grey or RGB, with or without alpha,
    channels interleaved or planar; its first page (EXIF orientation is not applied here, nor is the
    EXIF read: `exif_of_tiff`)."""
    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings about a damaged file would print beside our one error
    try:
        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) == 0:
                raise ImageError(f"cannot read {path.name}: the TIFF holds no image", "the file is damaged")
            page = tf.pages[0]
            frames, axes = len(tf.pages), page.axes
            photometric = tifffile.PHOTOMETRIC(page.photometric).name
            if photometric not in ("MINISBLACK", "RGB"):  # CMYK (SEPARATED) would pass for RGB + alpha
                raise ImageError(f"cannot read {path.name}: a {page.bitspersample}-bit {photometric} TIFF",
                                 "save it as an RGB or grey TIFF, or as a PNG")
            h, w = int(page.imagelength), int(page.imagewidth)
            _check_pixels(w, h, path, max_pixels)
            a = page.asarray()
            icc_tag = page.tags.get(34675)  # InterColorProfile
            icc = bytes(icc_tag.value) if icc_tag is not None else None
            xmp_tag = page.tags.get(700)  # XMP
            xmp = _xmp_bytes(xmp_tag.value) if xmp_tag is not None else None
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many kinds on a damaged file
        hint = ("install imagecodecs (pip install imagecodecs), or save the TIFF uncompressed or with "
                "deflate (zip) compression" if "imagecodecs" in str(exc) else "the file is damaged or not an image")
        raise ImageError(f"cannot read {path.name}: {type(exc).__name__}: {exc}", hint) from exc
    finally:
        quiet.setLevel(level)
    if axes == "SYX":
        a = np.moveaxis(a, 0, -1)
    elif axes == "YX":
        a = a[..., None]
    if axes not in ("YX", "YXS", "SYX") or a.dtype not in (np.uint8, np.uint16) or a.shape[2] > 4:
        raise ImageError(f"cannot read {path.name}: a TIFF of {a.dtype} samples laid out as {axes}",
                         "save it as an 8- or 16-bit RGB or grey TIFF, or as a PNG")
    alpha = None
    top = float(np.iinfo(a.dtype).max)
    if a.shape[2] in (2, 4):
        alpha = a[..., -1].astype(np.float32) / top
        a = a[..., :-1]
    grey = a.shape[2] == 1
    rgb = np.repeat(a, 3, axis=2) if grey else a
    return LoadedImage(np.ascontiguousarray(rgb.astype(np.float32) / top), alpha, 16 if top > 255 else 8, icc,
                       None, "TIFF", grey=grey, frames=frames, xmp=xmp)


def _is_16bit(path: Path, im: Image.Image) -> bool:
    """Pillow reduces 16-bit RGB(A) to 8 bits; the PNG header / TIFF tags tell the real depth."""
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)
        return len(head) == 25 and head[12:16] == b"IHDR" and head[24] == 16
    bps = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
    return bool(bps) and max(bps if isinstance(bps, tuple) else (bps,)) == 16


def _cmyk_to_srgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """The CMYK image in sRGB through its own profile (perceptual intent), else Pillow's plain formula
    (no profile, or one littlecms refuses); the flag says which."""
    if icc_colour_space(icc) == "CMYK":
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"),
                                            renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
            if out is not None:
                return out, True
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return im.convert("RGB"), False


def _from_pil(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    if im.mode in ("1", "L", "LA", "I", "F"):
        im = im.convert("LA" if im.mode == "LA" else "L")
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "A" in im.mode else "RGB")
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[..., None]
    alpha = None
    if a.shape[2] in (2, 4):
        alpha = a[..., -1].astype(np.float32) / 255.0
        a = a[..., :-1]
    grey = a.shape[2] == 1
    if grey:
        a = np.repeat(a, 3, axis=2)
    return a.astype(np.float32) / 255.0, alpha, grey


def _read_16bit(path: Path) -> tuple[np.ndarray, np.ndarray | None, bool]:
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if a is None:
        raise ImageError(f"cannot read the 16-bit pixels of {path.name}", "the file may be damaged")
    if a.ndim == 2:
        a = a[..., None]
    alpha = None
    if a.shape[2] in (2, 4):
        alpha = a[..., -1].astype(np.float32) / 65535.0
        a = a[..., :-1]
    grey = a.shape[2] == 1
    a = np.repeat(a, 3, axis=2) if grey else a[..., ::-1]  # OpenCV is BGR
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    return np.ascontiguousarray(a.astype(np.float32) / scale), alpha, grey


def icc_colour_space(icc: bytes | None) -> str | None:
    """The data colour space an ICC profile's header names ('RGB', 'GRAY', …), None if unreadable."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("ascii", "replace").strip() or None


def icc_transfer(icc: bytes | None) -> str:
    """"linear" when the profile's tone curve (rTRC, or kTRC for grey) is gamma 1.0, as Krita's g10
    profiles and linear scRGB are, else "srgb": the model is trained on gamma-encoded values, so
    linear pixels are encoded for it and decoded back (see `worker.pixels.for_model`)."""
    if not icc or len(icc) < 132:
        return "srgb"
    try:
        (count,) = struct.unpack_from(">I", icc, 128)
        table = {}
        for i in range(min(count, 256)):
            sig, off, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
            table[sig] = icc[off:off + size]
        curve = table.get(b"rTRC") or table.get(b"kTRC") or b""
        if curve[:4] == b"curv":
            (n,) = struct.unpack_from(">I", curve, 8)
            # no entries: the identity; one: a gamma in u8.8
            linear = n == 0 or (n == 1 and struct.unpack_from(">H", curve, 12)[0] == 0x0100)
        elif curve[:4] == b"para":
            kind, gamma = struct.unpack_from(">H", curve, 8)[0], struct.unpack_from(">i", curve, 12)[0]
            linear = kind == 0 and gamma == 0x10000
        else:
            linear = False
    except struct.error:  # a cut or damaged profile: treat the pixels as ordinary photos
        return "srgb"
    return "linear" if linear else "srgb"


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: np.swapaxes(x, 0, 1), 6: lambda x: np.swapaxes(x, 0, 1)[:, ::-1],
           7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1], 8: lambda x: np.swapaxes(x, 0, 1)[::-1]}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(a)) if op else a


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` that can be read (hidden ones left out), sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in READ_SUFFIXES and not p.name.startswith("."))


def output_name(src: Path, suffix: str = "") -> str:
    """The file name a restore of ``src`` gets in an output folder: its own format where it can be
    written, else PNG, or ``suffix`` (".png", ...) when one is asked for."""
    own = src.suffix.lower()
    return f"{src.stem}{suffix or (own if own in WRITE_FORMATS else '.png')}"


def check_quality(quality: int) -> None:
    """Lossy writers take 1-100; outside it an encoder fails with a bare 'Invalid parameter value'."""
    if not 1 <= int(quality) <= 100:
        raise ImageError(f"quality {quality} is out of range", "use a quality from 1 to 100")


def check_output_path(src: Path | None, dst: Path, force: bool) -> str:
    """The format for dst; refuses to overwrite the input (or anything) without force."""
    fmt = WRITE_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot write '{dst.suffix}' files", f"use one of {', '.join(sorted(WRITE_FORMATS))}")
    if src is not None and dst.exists() and src.exists() and dst.resolve() == src.resolve() and not force:
        raise ImageError(f"the output {dst.name} is the input file", "choose another output path or add --force")
    if dst.exists() and not force:
        raise ImageError(f"{dst} already exists", "choose another output path or add --force")
    if not dst.parent.is_dir():
        raise ImageError(f"the folder {dst.parent} does not exist")
    return fmt


def write_image(
    path: str | Path,
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    icc_profile: bytes | None = None,
    quality: int = 95,
    exif: bytes | None = None,
    grey: bool = False,
    xmp: bytes | None = None,
) -> None:
    """Write atomically (temp file + rename), so a failure never leaves a half-written file.

    `exif` (as read) is kept, its orientation reset to 1 (pixels are upright), on every output.
    `xmp` is kept on every output (`upright_xmp`: its orientation reset, a gain map it describes gone).
    `grey` writes one channel, the mean of the three, where the format holds it (WebP does not, and
    16-bit grey with alpha is not read back by Pillow: those get the grey value in all three). A
    profile whose colour space does not match the channels written (a grey profile on RGB) is left
    out rather than written wrong."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot write '{path.suffix}' files", f"use one of {', '.join(sorted(WRITE_FORMATS))}")
    if fmt in _LOSSY:
        check_quality(quality)
    if bit_depth == 16 and fmt not in _SIXTEEN_BIT:
        bit_depth = 8  # JPEG, WebP and AVIF (as Pillow writes it) are 8-bit formats
    has_alpha = alpha is not None and fmt != "JPEG"
    rgb = np.clip(rgb, 0, 1)
    if grey:
        rgb = rgb.mean(axis=2, keepdims=True)
        # WebP holds only RGB; grey + alpha at 16 bits is not read back by Pillow; HEIF stores grey +
        # alpha, and grey at 10 bits, as RGB(A) anyway
        if fmt == "WEBP" or (bit_depth == 16 and has_alpha) or (fmt == "HEIF" and (has_alpha or bit_depth == 16)):
            rgb = np.repeat(rgb, 3, axis=2)
    chans = [rgb, np.clip(alpha, 0, 1)[..., None]] if has_alpha else [rgb]
    a = np.concatenate(chans, axis=2)
    if icc_colour_space(icc_profile) != ("GRAY" if rgb.shape[2] == 1 else "RGB"):
        icc_profile = None
    xmp = upright_xmp(xmp) if xmp else None
    try:
        with replacing(path) as tmp:
            _encode(tmp, fmt, a, bit_depth, icc_profile, exif, xmp, quality)
    except (OSError, ValueError, RuntimeError) as exc:  # a full disk, a read-only folder, an encoder's refusal
        raise ImageError(f"could not write {path.name}: {exc}",
                         "check that the folder is writable and has room, or choose another format") from exc


def _encode(tmp: Path, fmt: str, a: np.ndarray, bit_depth: int, icc: bytes | None, exif: bytes | None,
            xmp: bytes | None, quality: int) -> None:
    """(H, W, 1-4) float pixels in [0, 1] into the file `tmp` in format `fmt`."""
    if bit_depth == 16 and fmt == "HEIF":
        _write_heif_deep(tmp, a, icc, exif, xmp, quality)
        return
    if fmt == "TIFF":
        top, kind = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
        write_tiff(tmp, (a * top + 0.5).astype(kind), icc, xmp, upright_exif(exif) if exif else None)
        return
    if bit_depth == 16:
        _write_16bit_png(tmp, a, icc, xmp, upright_exif(exif) if exif else None)
        return
    u8 = (a * 255.0 + 0.5).astype(np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[u8.shape[2]]
    im = Image.fromarray(u8[..., 0] if mode == "L" else u8, mode)
    kw = _metadata_kwargs(icc, exif, xmp if fmt != "PNG" else None)
    if xmp and fmt == "PNG":  # Pillow's PNG writer takes XMP only as a chunk
        kw["pnginfo"] = PngImagePlugin.PngInfo()
        kw["pnginfo"].add_itxt(_PNG_XMP_KEY, xmp.decode("utf-8", "replace"))
    if fmt in _LOSSY:
        kw["quality"] = int(quality)
    im.save(tmp, format=fmt, **kw)


_PNG_XMP_KEY = "XML:com.adobe.xmp"
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation\s*=\s*["\'])\d(["\'])'
                              rb'|(<tiff:Orientation>)\s*\d\s*(</tiff:Orientation>)')
# Ultra HDR's description of its gain map (hdrgm:*, the GContainer directory): the result has none
_XMP_GAIN_MAP = re.compile(rb'\s+(?:xmlns:hdrgm|hdrgm:\w+)\s*=\s*"[^"]*"'
                           rb"|<Container:Directory>.*?</Container:Directory>", re.S)


def _xmp_bytes(value: object) -> bytes | None:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, tuple):  # tifffile and Pillow's TIFF tags: a tuple of byte values at times
        value = bytes(value)
    return value if isinstance(value, bytes) and value.strip() else None


def upright_xmp(xmp: bytes) -> bytes:
    """The XMP packet with its tiff:Orientation set to 1 (the pixels were turned upright on read, and
    viewers honour XMP's orientation too) and a gain map's description left out (the result has none)."""
    xmp = _XMP_ORIENTATION.sub(lambda m: m.group(1) + b"1" + m.group(2) if m.group(1) else
                               m.group(3) + b"1" + m.group(4), xmp)
    return _XMP_GAIN_MAP.sub(b"", xmp)


def upright_exif(exif: bytes) -> bytes:
    """The EXIF block with its orientation tag set to 1 (the pixels were turned upright on read)."""
    tags = Image.Exif()
    try:
        tags.load(exif)
    except Exception:
        return b""
    if 0x0112 in tags:
        tags[0x0112] = 1
    return tags.tobytes()


def _write_16bit_png(tmp: Path, a: np.ndarray, icc: bytes | None, xmp: bytes | None, exif: bytes | None) -> None:
    """16-bit PNG through OpenCV, the profile and metadata chunks added here."""
    u16 = (a * 65535.0 + 0.5).astype(np.uint16)
    colour = u16.shape[2] >= 3
    bgr = u16[..., [2, 1, 0, 3]] if u16.shape[2] == 4 else u16[..., ::-1] if colour else u16[..., 0]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ImageError("could not encode a 16-bit PNG")
    data = buf.tobytes()
    if icc:
        data = _png_insert(data, b"iCCP", b"ICC\x00\x00" + zlib.compress(icc))
    if xmp:  # iTXt: keyword, no compression, no language tag, no translated keyword, the text
        data = _png_insert(data, b"iTXt", _PNG_XMP_KEY.encode() + b"\x00\x00\x00\x00\x00" + xmp)
    if exif:  # eXIf holds the TIFF-structured block without JPEG's "Exif\0\0" prefix
        data = _png_insert(data, b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    tmp.write_bytes(data)


def _write_heif_deep(tmp: Path, a: np.ndarray, icc: bytes | None, exif: bytes | None, xmp: bytes | None,
                     quality: int) -> None:
    """16-bit RGB(A) as a 10-bit HEIF, the depth phones write (pillow-heif takes the samples in 16 bits
    and keeps their top 10)."""
    u16 = np.ascontiguousarray((a * 65535.0 + 0.5).astype(np.uint16))
    mode = "RGBA;16" if u16.shape[2] == 4 else "RGB;16"
    heif = pillow_heif.from_bytes(mode=mode, size=(u16.shape[1], u16.shape[0]), data=u16.tobytes())
    heif.save(tmp, quality=int(quality), **_metadata_kwargs(icc, exif, xmp))


def _metadata_kwargs(icc: bytes | None, exif: bytes | None, xmp: bytes | None) -> dict:
    """The profile and metadata as Pillow's writers and pillow-heif's both take them."""
    kw: dict = {}
    if icc:
        kw["icc_profile"] = icc
    if exif:
        kw["exif"] = upright_exif(exif)
    if xmp:
        kw["xmp"] = xmp
    return kw


def _png_insert(png: bytes, kind: bytes, body: bytes) -> bytes:
    """Insert a chunk right after IHDR (iCCP must come before IDAT; OpenCV writes neither it nor iTXt)."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]
