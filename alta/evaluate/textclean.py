"""GLoRIA report/prompt cleaning used by the CheXpert 5x200 benchmarks (docs/evaluation.md §1).

Contract: ``gloria_clean(text) -> str`` is a pure function reproducing the GLoRIA procedure step by step:

1. newlines -> spaces;
2. split on ``[0-9]+\\.`` (numbered items), then split every piece on ``"."``;
3. per piece: replace U+FFFD U+FFFD by a space, lowercase, tokenise into ``\\w+`` runs, drop the piece when it has
   <= 1 token (counted *before* the non-ASCII step, as in GLoRIA), strip non-ASCII characters inside tokens and drop
   tokens that become empty, join the tokens with single spaces;
4. join the pieces with single spaces.

It is applied to the 5x200 ``Report Impression`` texts (retrieval candidates) and to the 5x200 zero-shot prompts.
It is *not* applied to ConVIRT text queries or RSNA prompts (raw text there).
"""

from __future__ import annotations

import re

_NUMBERED_ITEM = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")
_DOUBLE_REPLACEMENT_CHAR = "\ufffd\ufffd"


def _clean_piece(piece: str) -> str | None:
    """Return the cleaned piece, or None when GLoRIA drops it (<= 1 token)."""
    piece = piece.replace(_DOUBLE_REPLACEMENT_CHAR, " ")
    tokens = _WORD.findall(piece.lower())
    if len(tokens) <= 1:
        return None
    # GLoRIA encodes each token to ASCII with errors="ignore": non-ASCII characters vanish, empty tokens go.
    kept = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
    return " ".join(t for t in kept if t)


def gloria_sentences(text: str) -> list[str]:
    """Cleaned pieces (sentences) of ``text`` in order; a piece whose tokens are all non-ASCII yields ``""``."""
    text = text.replace("\n", " ")
    pieces = [sent for item in _NUMBERED_ITEM.split(text) for sent in item.split(".")]
    out: list[str] = []
    for piece in pieces:
        cleaned = _clean_piece(piece)
        if cleaned is not None:
            out.append(cleaned)
    return out


def gloria_clean(text: str) -> str:
    """Clean one report or prompt with the GLoRIA procedure; returns the pieces joined by single spaces.

    A missing value (None/NaN) is an error rather than the string "nan": the caller must decide what an absent
    report means.
    """
    if not isinstance(text, str):
        raise TypeError(f"gloria_clean expects a str, got {type(text).__name__}: {text!r}")
    return " ".join(gloria_sentences(text))


def normalise_for_duplicates(text: str) -> str:
    """Normalisation used to group identical texts for instance retrieval (docs/evaluation.md §5).

    Lowercase, collapse every whitespace run to one space, strip.
    """
    return " ".join(text.lower().split())
