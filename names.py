"""Display names that cannot impersonate, and chat text without invisible tricks.

Pure functions, no state. Two names collide when they look alike to a person:
the same after NFKC, removal of invisible characters, and a confusable
*skeleton* in the manner of Unicode TR39 (UTS #39 section 4), compared three
ways: as typed, all in small letters (case folded) and all in capitals. So
"Аlice" (Cyrillic А), "ALICE", "𝔸𝕝𝕚𝕔𝕖", "ａｌｉｃｅ" and "A\u200dlice" all collide
with "Alice", "Ian" with "lan", while "Ann" and "Anna" or "Bob" and "Rob" do not.

Why no dependency: on PyPI, ``confusable_homoglyphs`` ships a symmetric
"looks like" graph (no TR39 prototypes, so no skeleton) of 900 KB, and
``confusables`` (last release 2021) installs a top-level ``tests`` package that
would shadow ours. The table below is instead generated from UTS #39's own
confusables.txt (version 13.0.0) by ``scripts/make_confusables_table.py``,
keeping only prototypes made of Latin letters, digits and name punctuation:
that is the impersonation the issue found (another script, or styled letters,
passing for a Latin name). Look-alikes *within* other scripts (two Arabic
names differing in a confusable mark) are not caught. Data derived from
confusables.txt, © Unicode, Inc., under the Unicode License.

Known, accepted over-matching (TR39's own choices): "m" looks like "rn",
"0" like "O", "1", "I" and "|" like "l"; so "Kim" collides with "Kirn" and
"B0B" with "BOB".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import config

# --- The confusable table -----------------------------------------------------------
# Prototype -> code points (hex) that look like it. Hex rather than the characters
# themselves: many are right-to-left or combine, which would scramble this source
# in an editor. Generated, then reviewed; see the module docstring.
_CONFUSABLES_HEX: dict[str, str] = {
    "2": "A75A 01A7 03E8 A644 14BF A6EF",
    "3": "1D206 A7AB 021C 01B7 A76A 2CCC 0417 04E0 16F3B 118CA",
    "4": "13CE 118AF",
    "5": "01BC 118BB",
    "6": "2CD2 0431 13EE 118D5",
    "7": "1D212 104D2 118C6",
    "8": "0B03 09EA 0A6A 1E8CB 0223 0222 1031A",
    "9": "0A67 0B68 09ED 0D6D A76E 2CCA 118CC 118AC 118D6",
    "A": "0391 0410 13AA 15C5 A4EE 16F40 102A0",
    "a": "237A 0251 03B1 0430",
    "AA": "A732",
    "aa": "A733",
    "AE": "00C6 04D4",
    "ae": "00E6 04D5",
    "AO": "A734",
    "ao": "A735",
    "AR": "1F707",
    "AU": "A736",
    "au": "A737",
    "AV": "A738 A73A",
    "av": "A739 A73B",
    "AY": "A73C",
    "ay": "A73D",
    "B": "A7B4 0392 0412 13F4 15F7 A4D0 10282 102A1 10301",
    "b": "0184 042C 13CF 1472 15AF",
    "bl": "042B",
    "C": "1F74C 118F2 118E9 2CA4 0421 13DF A4DA 102A2 10302 10415 1051C",
    "c": "1D04 2CA5 0441 ABAF 1043D",
    "D": "13A0 15DE 15EA A4D3",
    "d": "0501 13E7 146F A4D2",
    "dz": "02A3",
    "E": "22FF 0395 0415 2D39 13AC A4F0 118A6 118AE 10286",
    "e": "212E AB32 0435 04BD",
    "F": "1D213 A798 03DC 15B4 A4DD 118C2 118A2 10287 102A5 10525",
    "f": "AB35 A799 1E9D 0584",
    "G": "050C 13C0 13F3 A4D6",
    "g": "0261 1D83 018D 0581",
    "H": "0397 2C8E 041D 13BB 157C A4E7 102CF",
    "h": "04BB 0570 13C2",
    "i": "2373 0131 026A 0269 03B9 0456 A647 04CF AB75 13A5 118C3",
    "J": "A7B2 037F 0408 13AB 148D A4D9",
    "j": "03F3 0458",
    "K": "039A 2C94 041A 13E6 16D5 A4D7 10518",
    "L": "1D22A 2CD0 13DE 14AA A4E1 16F16 118A3 118B2 1041B 10526",
    "l": (
        "05C0 2223 23FD 0661 06F1 10320 1E8C7 0196 01C0 0399 2C92 0406 04C0 05D5 "
        "05DF 0627 07CA 2D4F 16C1 A4F2 16F28 1028A 10309 "
    ),
    "ll": "2016 2225 01C1 05F0",
    "lO": "042E",
    "ls": "02AA",
    "lt": "20B6",
    "lz": "02AB",
    "M": "039C 03FA 2C98 041C 13B7 15F0 16D6 A4DF 102B0 10311",
    "MB": "1F76B",
    "N": "039D 2C9A A4E0 10513",
    "n": "0578 057C",
    "O": (
        "07C0 09E6 0B66 3007 114D0 118E0 039F 2C9E 041E 0555 2D54 12D0 0B20 104C2 "
        "A4F3 118B5 10292 102AB 10404 10516 "
    ),
    "o": (
        "0C02 0C82 0D02 0D82 0966 0A66 0AE6 0BE6 0C66 0CE6 0D66 0E50 0ED0 1040 "
        "0665 06F5 1D0F 1D11 AB3D 03BF 03C3 2C9F 043E 10FF 0585 05E1 0647 06BE "
        "06C1 06D5 0D20 101D 104EA 118C8 118D7 1042C "
    ),
    "OE": "0152",
    "oe": "0153",
    "OO": "A74E A698",
    "oo": "221E A74F A699",
    "P": "03A1 2CA2 0420 13E2 146D A4D1 10295",
    "p": "2374 03C1 2CA3 0440",
    "Q": "2D55",
    "q": "051B 0563 0566",
    "QE": "1F700",
    "R": "1D216 01A6 13A1 13D2 104B4 1587 A4E3 16F35",
    "r": "AB47 AB48 1D26 2C85 0433 AB81",
    "rn": "118E3 11700",
    "S": "0405 054F 13D5 13DA A4E2 16F3A 10296 10420",
    "s": "A731 01BD 0455 ABAA 118C1 10448",
    "sss": "1F75C",
    "T": "22A4 27D9 1F768 03A4 2CA6 0422 13A2 A4D4 16F0A 118BC 10297 102B1 10315",
    "T3": "A728",
    "tf": "A777",
    "ts": "02A6",
    "U": "222A 22C3 054D 1200 104CE 144C A4F4 16F42 118B8",
    "u": "A79F 1D1C AB4E AB52 028B 03C5 057D 104F6 118D8",
    "ue": "1D6B",
    "uo": "AB63",
    "V": "1D20D 0667 06F7 0474 2D38 13D9 142F A6DF A4E6 16F08 118A0 1051D",
    "v": "2228 22C1 1D20 03BD 0475 05D8 11706 ABA9 118C0",
    "VB": "1F76C",
    "W": "118EF 118E6 051C 13B3 13D4 A4EA",
    "w": "026F 1D21 0461 051D 0561 1170A 1170E 1170F AB83",
    "X": ("166D 2573 10322 118EC A7B3 03A7 2CAC 0425 2D5D 16B7 A4EB 10290 102B4 10317 " "10527 "),
    "x": "166E 00D7 292B 292C 2A2F 0445 1541 157D",
    "Y": "03A5 2CA8 0423 04AE 13A9 13BD A4EC 16F43 118A4 102B2",
    "y": "0263 1D8C 028F 1EFF AB5A 03B3 0443 04AF 10E7 118DC",
    "Z": "102F5 118E5 0396 13C3 A4DC 118A9",
    "z": "1D22 AB93 118C4",
    "'": (
        "055D 2018 2019 201B 2032 2035 055A 05F3 02B9 02C8 02CA 02CB 02F4 02BB "
        "02BD 02BC 02BE A78C 05D9 07F4 07F5 144A 16CC 16F51 16F52 "
    ),
    "''": "1CD3 201C 201D 201F 3003 05F4 02BA 02F6 02EE 05F2",
    "-": "2010 2012 2013 06D4 2043 02D7 2212 2796 2CBA",
    ".": "1D16D 0701 0702 A60E 10A50 0660 06F0 A4F8",
}

# ASCII sources TR39 maps (written by hand: the generator skips ASCII).
_ASCII_CONFUSABLES = {"I": "l", "1": "l", "|": "l", "0": "O", "m": "rn", "`": "'", '"': "''"}


def _build_map() -> dict[int, str]:
    table = {ord(src): proto for src, proto in _ASCII_CONFUSABLES.items()}
    for proto, codes in _CONFUSABLES_HEX.items():
        for code in codes.split():
            table[int(code, 16)] = proto
    return table


_SKELETON_MAP = _build_map()

# --- Invisible characters ----------------------------------------------------------
# Default_Ignorable_Code_Point (DerivedCoreProperties.txt) beyond category Cf:
# fillers and selectors that draw nothing.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # unassigned specials
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
# Bidirectional controls: embeddings, overrides, isolates, marks (Trojan-source tricks).
BIDI_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c"]
)
# Format characters chat keeps: joiners (emoji sequences, Persian and Indic text) and
# the visible prepended concatenation marks (Arabic number signs and the like).
_CHAT_KEPT_FORMAT = frozenset(
    "\u200c\u200d\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"
)
# Variation selectors chat keeps: they choose a glyph (emoji or text presentation, a
# Mongolian letter form, a CJK ideograph variant), never hide or reorder text.
_CHAT_KEPT_SELECTORS = ((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
_BLACK_FLAG = "\U0001f3f4"  # emoji tag sequences (subdivision flags) follow it
_TAG_RANGE = range(0xE0020, 0xE0080)
_WHITESPACE_RUN = re.compile(r"\s+")


def is_invisible(ch: str) -> bool:
    """A character that draws nothing: format (Cf) or otherwise default-ignorable."""
    if unicodedata.category(ch) == "Cf":
        return True
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _IGNORABLE_RANGES)


def strip_invisible(text: str) -> str:
    """``text`` without the characters ``is_invisible`` names."""
    return "".join(ch for ch in text if not is_invisible(ch))


# --- Names --------------------------------------------------------------------------


def _prepare(name: str) -> str:
    """NFKC, invisible characters removed, whitespace runs made one space, trimmed."""
    text = strip_invisible(unicodedata.normalize("NFKC", name))
    return _WHITESPACE_RUN.sub(" ", text).strip()


def skeleton(text: str) -> str:
    """TR39's skeleton: NFD, every confusable replaced by its prototype, NFD; shown as NFC."""
    mapped = unicodedata.normalize("NFD", text).translate(_SKELETON_MAP)
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", mapped))


def _fold(text: str) -> str:
    # NFKC again after casefold, as Unicode's NFKC_Casefold does: casefold can denormalise.
    return unicodedata.normalize("NFKC", text.casefold())


def name_key(name: str) -> str:
    """The key two names share when they are the same name in small letters or look so.

    Case-insensitive (casefold), NFKC, blind to invisible characters and to
    confusables of Latin letters. Use it to index names; use ``is_lookalike``
    to decide a collision (it also compares the names as typed and in capitals).
    """
    return skeleton(_fold(_prepare(name)))


def lookalike_keys(name: str) -> tuple[str, str, str]:
    """The three skeletons compared by ``is_lookalike``: small letters, as typed, capitals."""
    prepared = _prepare(name)
    capitals = unicodedata.normalize("NFKC", prepared.upper())
    return skeleton(_fold(prepared)), skeleton(prepared), skeleton(capitals)


def is_lookalike(name: str, others: Iterable[str]) -> str | None:
    """The first of ``others`` that ``name`` could pass for, or None.

    Two names collide when any of their ``lookalike_keys`` match, slot by slot.
    A name always collides with itself and with any case variant of itself.
    """
    mine = lookalike_keys(name)
    for other in others:
        theirs = lookalike_keys(other)
        if any(a == b for a, b in zip(mine, theirs, strict=True)):
            return other
    return None


# --- Chat ---------------------------------------------------------------------------


# Fast paths of clean_chat_text (chat is hot: up to CHAT_RATE_MESSAGES_PER_S per person).
_ASCII_DROPPED = {c: None for c in (*range(32), 127) if chr(c) not in "\n\t"}
_DROPPED_MEMO: dict[str, bool] = {}  # character -> dropped; bounded below
_DROPPED_MEMO_MAX = 65536


def _chat_char_dropped(ch: str) -> bool:
    code = ord(ch)
    if ch in "\n\t":
        return False
    cat = unicodedata.category(ch)
    if cat == "Cc" or cat == "Cs":  # controls (C0, DEL, C1); lone surrogates cannot be sent
        return True
    if cat == "Cf":
        return ch not in _CHAT_KEPT_FORMAT
    if (0xFDD0 <= code <= 0xFDEF) or (code & 0xFFFE) == 0xFFFE:  # noncharacters
        return True
    if any(lo <= code <= hi for lo, hi in _CHAT_KEPT_SELECTORS):
        return False
    return any(lo <= code <= hi for lo, hi in _IGNORABLE_RANGES)


def clean_chat_text(text: str) -> str:
    """Chat text without bidi controls, invisible format characters and controls.

    Kept: ``\\n``, ``\\t``, joiners (ZWJ, ZWNJ), variation selectors (emoji,
    Mongolian, CJK) and the tag characters of an emoji flag sequence. Line
    ends are made ``\\n`` (CR LF, CR, NEL, U+2028 and U+2029). Right-to-left
    *letters* (Arabic, Hebrew) are untouched: only the invisible controls that
    reorder text go.
    Nothing is trimmed; the caller still refuses a message left empty.
    """
    text = text.replace("\r\n", "\n")
    if text.isascii():  # the common case, ~100 times faster than the loop below
        return text.replace("\r", "\n").translate(_ASCII_DROPPED)
    for line_end in ("\r", "\x85", "\u2028", "\u2029"):
        text = text.replace(line_end, "\n")
    out: list[str] = []
    in_flag = False
    memo = _DROPPED_MEMO
    for ch in text:
        if ord(ch) in _TAG_RANGE:
            if in_flag:
                out.append(ch)
                in_flag = ch != "\U000e007f"  # CANCEL TAG ends the sequence
            continue
        in_flag = ch == _BLACK_FLAG
        dropped = memo.get(ch)
        if dropped is None:
            dropped = _chat_char_dropped(ch)
            if len(memo) < _DROPPED_MEMO_MAX:
                memo[ch] = dropped
        if not dropped:
            out.append(ch)
    return "".join(out)


# --- Display names and file names (moved from utils) ------------------------------


def clean_display_name(text: str, max_chars: int) -> str | None:
    """Trim a username or session name; None if empty, too long or with control chars."""
    text = text.strip()
    if not 1 <= len(text) <= max_chars:
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in text):
        return None
    return text


def clean_file_name(name: str, max_chars: int = config.MAX_FILE_NAME_CHARS) -> str | None:
    """A shared file's display name: no path separators, ``..`` or control characters.

    Returns None when nothing usable is left.
    """
    out = []
    for ch in name:
        if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append("_")
        else:
            out.append(ch)
    cleaned = "".join(out).strip()
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    cleaned = cleaned.strip(" .")
    if not cleaned or set(cleaned) <= {"_"}:
        return None
    return cleaned[:max_chars]
