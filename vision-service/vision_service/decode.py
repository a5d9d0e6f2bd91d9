"""Untrusted upload bytes -> an upright RGB image, or a clear 4xx error.

Uploads are identified by their content, never by the declared content type, and refused (413, 415,
422) before they can cost much memory or time: the pixel count is checked from the header alone,
before anything is decoded.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from modelgate_core.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType

# Pillow's names for the formats accepted; only their decoders ever see an upload.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
ACCEPTED_NAMES = "JPEG, PNG or WebP"

# A few well-known signatures, only to say what an unsupported upload looks like.
_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
)

# Pillow raises these for damaged or truncated data, depending on the format and where it breaks.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)

# Pillow's bomb check (Image.MAX_IMAGE_PIXELS, process-wide) warns above its limit and raises above twice
# it; make both errors. `decode_image` checks its own, configurable limit first; this is the backstop.
warnings.simplefilter("error", Image.DecompressionBombWarning)


def _describe(data: bytes) -> str:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return f"a {name} file"
    if data[4:8] == b"ftyp":
        return "an HEIC/AVIF or MP4 file"
    return "not a recognisable image"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white rather than whatever colour they hide."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Identify, size-check and decode one upload into an upright RGB image, or raise a 4xx error.

    With `draft_size`, a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the DCT, cheap and
    clean) while both sides stay at least `draft_size`: a 12-megapixel photo decodes several times
    faster, into a fraction of the memory, and still reaches the network through the same resize.
    """
    if not data:
        raise Unprocessable("The uploaded file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"Unsupported image: the upload is {_describe(data)}; send a {ACCEPTED_NAMES} image"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Only the header has been read: the dimensions alone are over the limit.
        raise PayloadTooLarge(f"Image dimensions exceed the limit of {max_pixels:,} pixels") from None
    except _DECODE_ERRORS as exc:
        raise Unprocessable(f"The {ACCEPTED_NAMES} image could not be read: {exc}") from None
    width, height = img.size
    # Only the header has been read so far: refuse before decoding anything.
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"Image is {width}x{height} ({width * height:,} pixels); the limit is {max_pixels:,} pixels"
        )
    if width < 1 or height < 1:
        raise Unprocessable(f"Image has no pixels ({width}x{height})")
    try:
        if draft_size and img.format == "JPEG":
            img.draft(None, (draft_size, draft_size))
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"Image dimensions exceed the limit of {max_pixels:,} pixels") from None
    except _DECODE_ERRORS as exc:
        # Truncated or corrupt pixel data: the header was fine, the rest is not.
        raise Unprocessable(
            f"The {img.format} image is damaged or truncated and could not be decoded: {exc}"
        ) from None
