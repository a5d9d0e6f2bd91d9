"""Untrusted upload bytes -> an upright RGB image, or a clear 4xx error.

Uploads are identified by their content, never by the declared content type, and refused (413, 415,
422) before they can cost much memory or time: the pixel count is checked from the header alone,
before anything is decoded (`open_image`), and only then are the pixels decoded (`load_image`).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

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
# it; make both errors. `open_image` checks its own, configurable limit first; this is the backstop.
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
        # An RGBA image is used as it is: `convert` would copy it, a full-size copy for nothing.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        # The image is its own mask (its alpha band): no separate copy of the alpha channel.
        background.paste(rgba, mask=rgba)
        return background
    return img.convert("RGB")


def _too_large(max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Image dimensions exceed the limit of {max_pixels:,} pixels")


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify one upload and check its size from the header alone, or raise a 4xx error.

    Nothing is decoded yet: `Image.open` reads only the header, so an image of more than `max_pixels`
    is refused for the cost of a few bytes, whatever it would take to decode.
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
        # Pillow's own check, in `open`: the dimensions alone are over its (larger) limit.
        raise _too_large(max_pixels) from None
    except _DECODE_ERRORS as exc:
        raise Unprocessable(f"The {ACCEPTED_NAMES} image could not be read: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"Image is {width}x{height} ({width * height:,} pixels); the limit is {max_pixels:,} pixels"
        )
    if width < 1 or height < 1:
        raise Unprocessable(f"Image has no pixels ({width}x{height})")
    return img


def load_image(img: Image.Image, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode an image `open_image` has checked into an upright RGB image, or raise a 4xx error.

    With `draft_size`, a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the DCT, cheap and
    clean) while both sides stay at least `draft_size`: a 12-megapixel photo decodes several times
    faster, into a fraction of the memory, and still reaches the network through the same resize.
    PNG and WebP have no such reduced decode: their size limit is what bounds their memory.
    """
    try:
        if draft_size and img.format == "JPEG":
            img.draft(None, (draft_size, draft_size))
        img.load()
        # In place: without an orientation tag `exif_transpose` would return a full-size copy.
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(max_pixels) from None
    except _DECODE_ERRORS as exc:
        # Truncated or corrupt pixel data: the header was fine, the rest is not.
        raise Unprocessable(
            f"The {img.format} image is damaged or truncated and could not be decoded: {exc}"
        ) from None


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Identify, size-check and decode one upload into an upright RGB image, or raise a 4xx error."""
    return load_image(open_image(data, max_pixels), max_pixels, draft_size)


class DecodeBudget:
    """How many pixels the decodes running at once in one process may hold, taken in arrival order.

    Decoding runs outside the model's slot, in as many threads as requests arrive, so the pixel limit
    per image alone does not bound a worker's memory: sixteen large PNGs at once would need sixteen
    times it. Each decode holds its image's header pixel count (what its buffers scale with, even
    for a drafted progressive JPEG, whose coefficients are kept at full size) until it has been
    resized; a decode that does not fit waits, and so does every later one, so that a large image
    is not starved by a stream of small ones.
    """

    def __init__(self, pixels: int) -> None:
        if pixels < 1:
            raise ValueError(f"a decode budget needs at least 1 pixel, got {pixels}")
        self.capacity = pixels
        self.held = 0
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def waiting(self) -> int:
        """Decodes waiting for their turn."""
        return len(self._queue)

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget for the block (an image larger than it takes all of it)."""
        want = min(max(pixels, 0), self.capacity)
        place = object()
        with self._condition:
            self._queue.append(place)
            try:
                self._condition.wait_for(
                    lambda: self._queue[0] is place and self.held + want <= self.capacity
                )
            finally:
                # Out of the queue whether it got its turn or was interrupted waiting: never in the way.
                self._queue.remove(place)
                self._condition.notify_all()
            self.held += want
        try:
            yield
        finally:
            with self._condition:
                self.held -= want
                self._condition.notify_all()
