"""FITS bytes <-> (float32 image, header dict), with checksums, for S3 objects.

``to_fits_bytes`` writes one primary HDU with CHECKSUM/DATASUM cards; the output is the same
bytes for the same input (the cards carry no timestamp). ``from_fits_bytes`` verifies what it
reads and raises ``ValueError`` saying why for anything that is not an intact 2-D FITS image,
which the activator reports as a non-retriable "corrupt FITS" failure.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.io import fits

from prompt_processing.imaging.psf import FloatImage

HeaderValue = str | int | float | bool

FITS_BLOCK_BYTES = 2880
_KEY_PATTERN = re.compile(r"^[A-Z0-9_-]{1,60}$")
_STRUCTURAL_KEYS = frozenset(
    {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "BZERO", "BSCALE", "PCOUNT", "GCOUNT", "XTENSION", "END"}
    | {"CHECKSUM", "DATASUM", "COMMENT", "HISTORY", ""}
)
_CHECKSUM_COMMENT = "checksum of this HDU"


def to_fits_bytes(image: npt.NDArray[Any], header: Mapping[str, HeaderValue]) -> bytes:
    """A FITS file holding ``image`` as 32-bit floats and ``header``'s cards, in order.

    Keys must be upper-case FITS characters (A-Z, 0-9, _ and -); keys longer than 8 characters
    become HIERARCH cards. Structural keys (SIMPLE, NAXIS..., CHECKSUM) are refused, as are
    non-finite floats, non-ASCII strings and strings holding "'/" (astropy misreads them).
    ``from_fits_bytes`` returns exactly these, within two limits of FITS: trailing spaces of
    strings are not significant (dropped), and a float gets at most 20 characters, so one
    whose shortest repr is longer (1.0000000000000002e+16) comes back to 16 digits.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    fits_header = fits.Header()
    for key, value in header.items():
        _check_card(key, value)
        fits_header[f"HIERARCH {key}" if len(key) > 8 else key] = value
    hdu = fits.PrimaryHDU(data=np.asarray(image, dtype=np.float32), header=fits_header)
    hdu.add_checksum(when=_CHECKSUM_COMMENT)
    buffer = io.BytesIO()
    hdu.writeto(buffer, output_verify="exception")
    return buffer.getvalue()


def from_fits_bytes(data: bytes) -> tuple[FloatImage, dict[str, HeaderValue]]:
    """The primary image (native-endian float32) and its non-structural header cards.

    Raises ``ValueError`` naming the reason ("not a FITS file", "truncated FITS", "corrupt
    FITS: checksum mismatch", ...) when ``data`` cannot be trusted.
    """
    if not data.startswith(b"SIMPLE  ="):
        raise ValueError(f"not a FITS file: {len(data)} bytes without a leading SIMPLE card")
    if len(data) % FITS_BLOCK_BYTES:
        raise ValueError(f"truncated FITS: {len(data)} bytes is not a whole number of 2880-byte blocks")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(io.BytesIO(data), memmap=False, checksum=True, lazy_load_hdus=False) as hdus:
                header = hdus[0].header
                pixels = hdus[0].data
                image = None if pixels is None else np.array(pixels, dtype=np.float32)
    except Exception as exc:  # astropy raises OSError, TypeError, VerifyError... for bad bytes
        raise ValueError(f"corrupt FITS: {type(exc).__name__}: {exc}") from exc
    problems = [str(w.message).strip() for w in caught]
    if problems:
        raise ValueError(f"corrupt FITS: {'; '.join(problems)}")
    if image is None or image.ndim != 2:
        raise ValueError(f"corrupt FITS: expected a 2-D primary image, got {None if image is None else image.shape}")
    cards = {key: header[key] for key in header if not _is_structural(key)}
    return image, cards


HEADER_PROBE_BYTES = 4 * FITS_BLOCK_BYTES
"""How much of a file ``fits_header`` needs for a raw's primary header (ours fit in one block)."""


def fits_header(head: bytes) -> dict[str, HeaderValue]:
    """The non-structural cards of the primary header, from the first bytes of a FITS file (no pixels
    needed); ``ValueError`` if they are not a FITS header or it does not end within them."""
    if not head.startswith(b"SIMPLE  ="):
        raise ValueError("not a FITS file: no leading SIMPLE card")
    text = head.decode("ascii", errors="replace")
    cards = [text[i : i + 80] for i in range(0, len(text) - len(text) % 80, 80)]
    end = next((i for i, card in enumerate(cards) if card.rstrip() == "END"), None)
    if end is None:
        raise ValueError(f"no END card in the first {len(head)} bytes")
    header = fits.Header.fromstring("".join(cards[: end + 1]))
    return {key: header[key] for key in header if not _is_structural(key)}


def _is_structural(key: str) -> bool:
    return key in _STRUCTURAL_KEYS or re.fullmatch(r"NAXIS\d+", key) is not None


def _check_card(key: str, value: HeaderValue) -> None:
    if not _KEY_PATTERN.match(key) or _is_structural(key):
        raise ValueError(f"header key {key!r} is not an upper-case, non-structural FITS keyword")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"header value for {key!r} must be finite, got {value}")
    if isinstance(value, str) and not (value.isascii() and value.isprintable()):
        raise ValueError(f"header value for {key!r} must be printable ASCII")
    if isinstance(value, str) and "'/" in value:  # astropy 8 reads "a'/b" back as "a'"
        raise ValueError(f'header value for {key!r} must not contain "\'/", which astropy misreads')
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"header value for {key!r} must be str, int, float or bool, got {type(value).__name__}")
