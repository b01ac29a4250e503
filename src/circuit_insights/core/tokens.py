"""Token display: a readable, never empty string for a token id (display only; ids are the truth)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte <-> printable character table of byte-level BPE (GPT-2)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


_UNICODE_TO_BYTE = {char: byte for byte, char in _bytes_to_unicode().items()}


def readable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (``\\n``, ``\\x00``).

    Display only: a literal backslash is kept as it is.
    """
    return "".join(char if char == " " or char.isprintable() else repr(char)[1:-1] for char in text)


def display_token(token_id: int, tokenizer: object | None) -> str:
    """A readable, never empty string for one token id (display only; ids are the truth).

    No tokenizer: ``<id>``. SentencePiece byte tokens ``<0x0A>`` show the character escaped
    (``\\n``) below 0x80 and stay ``<0xE2>`` above; byte-level BPE fragments that are not valid
    UTF-8 alone show their bytes escaped (``\\xe2\\x80``); an empty decoding shows ``<empty:id>``.
    """
    token_id = int(token_id)
    if tokenizer is None:
        return f"<{token_id}>"
    try:
        piece = tokenizer.convert_ids_to_tokens(token_id)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - out-of-range ids and odd tokenizers
        piece = None
    if isinstance(piece, str):
        match = _BYTE_TOKEN.match(piece)
        if match:
            value = int(match.group(1), 16)
            return readable(chr(value)) if value < 0x80 else piece
    try:
        text = tokenizer.decode(  # type: ignore[attr-defined]
            [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
    except Exception:  # noqa: BLE001
        text = None
    if not isinstance(text, str) or "\ufffd" in text:
        if isinstance(piece, str) and piece and all(c in _UNICODE_TO_BYTE for c in piece):
            raw = bytes(_UNICODE_TO_BYTE[c] for c in piece)
            text = raw.decode("utf-8", errors="backslashreplace")
        elif isinstance(piece, str):
            text = piece
        else:
            return f"<{token_id}>"
    if text == "":
        return f"<empty:{token_id}>"
    return readable(text)


class TokenDisplay:
    """Caching :func:`display_token` for one tokenizer (or none)."""

    def __init__(self, tokenizer: object | None) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id not in self._cache:
            self._cache[token_id] = display_token(token_id, self.tokenizer)
        return self._cache[token_id]

    def many(self, token_ids: Sequence[int] | np.ndarray) -> list[str]:
        return [self(token_id) for token_id in token_ids]
