"""names: look-alike display names collide, distinct ones do not; chat loses invisible tricks."""

from __future__ import annotations

import unicodedata

import pytest

import names
import utils

# --- look-alike names -------------------------------------------------------------------

# (newcomer, present name): each pair must collide.
LOOKALIKES = [
    ("\u0410lice", "ALICE"),  # Cyrillic capital A, then Latin
    ("\u0410lice", "Alice"),
    ("\U0001d538\U0001d55d\U0001d55a\U0001d554\U0001d556", "Alice"),  # double-struck
    ("\U0001d538\U0001d55d\U0001d55a\U0001d554\U0001d556", "ALICE"),
    ("a\u200dlice", "Alice"),  # zero-width joiner
    ("al\u200bice", "alice"),  # zero-width space
    ("ali\u00adce", "alice"),  # soft hyphen
    ("\uff41\uff4c\uff49\uff43\uff45", "Alice"),  # fullwidth
    ("B\u03bfb", "Bob"),  # Greek small omicron
    ("\u039fscar", "Oscar"),  # Greek capital omicron
    ("\u0430\u0441\u0435", "ace"),  # all Cyrillic: а с е
    ("P\u0430ul", "paul"),  # Cyrillic а, and case
    ("\u041dILL", "Hill"),  # Cyrillic capital En, compared in capitals
    ("Ian", "lan"),  # capital I and small l, as typed
    ("BiII", "Bill"),
    ("Player1", "Playerl"),
    ("B0B", "BOB"),  # digit zero and capital O
    ("A|ice", "Alice"),
    ("Kirn", "Kim"),  # rn and m
    ("alice", "ALICE"),  # plain case variants, as before
    ("  Alice  ", "Alice"),
    ("Mary  Ann", "Mary Ann"),  # whitespace runs
    ("O\u2019Brien", "O'Brien"),  # right single quotation mark
    ("Jean\u2010Luc", "Jean-Luc"),  # Unicode hyphen
    ("e\u0301mile", "\u00e9mile"),  # decomposed and composed é
    ("\u212bngstr\u00f6m", "\u00c5ngstr\u00f6m"),  # Angstrom sign and Å
    ("TEA\u039c", "TEAM"),  # Greek capital Mu: only the capitals look alike
    ("\u0422\u0435\u0430m", "Team"),  # Cyrillic Т е а
]


@pytest.mark.parametrize(("name", "present"), LOOKALIKES)
def test_lookalike_names_collide(name: str, present: str) -> None:
    assert names.is_lookalike(name, ["Zed", present, "Yan"]) == present
    assert names.is_lookalike(present, [name]) == name  # the relation is symmetric


# Pairs that must stay distinct (real, different names).
DISTINCT = [
    ("Ann", "Anna"),
    ("Bob", "Rob"),
    ("ian", "lan"),  # a dotted i is not an l
    ("Lia", "Ila"),
    ("Alice", "Alicia"),
    ("Alice1", "Alice2"),
    ("\u00e9mile", "emile"),  # accents are visible
    ("Zo\u00eb", "Zoe"),
    ("Mohammed", "Muhammad"),
    ("\u0645\u062d\u0645\u062f", "\u0623\u062d\u0645\u062f"),  # محمد and أحمد
    ("\u05d3\u05d5\u05d3", "\u05d9\u05d5\u05e1\u05e3"),  # דוד and יוסף
    ("\u674e\u96f7", "\u674e\u9732"),  # 李雷 and 李露
    ("Dmitry", "\u0414\u043c\u0438\u0442\u0440\u0438\u0439"),  # Latin and Cyrillic spelling
]


@pytest.mark.parametrize(("a", "b"), DISTINCT)
def test_distinct_names_stay_distinct(a: str, b: str) -> None:
    assert names.is_lookalike(a, [b]) is None
    assert names.is_lookalike(b, [a]) is None


@pytest.mark.parametrize(
    "name",
    [
        "\u0645\u062d\u0645\u062f",  # Arabic
        "\u05d3\u05d5\u05d3",  # Hebrew
        "\u0417\u043e\u044f",  # Russian
        "\u674e\u96f7",  # Chinese
        "\u0928\u093f\u0924\u093f\u0928",  # Devanagari
    ],
)
def test_names_in_other_scripts_are_fine_alone_and_match_themselves(name: str) -> None:
    assert names.clean_display_name(name, 32) == name
    assert names.is_lookalike(name, []) is None
    assert names.is_lookalike(name, ["Alice", "Bob"]) is None
    assert names.is_lookalike(name, [name]) == name


def test_is_lookalike_returns_the_first_collision_and_none_for_no_others() -> None:
    assert names.is_lookalike("alice", []) is None
    assert names.is_lookalike("alice", ("Bob", "ALICE", "Alice")) == "ALICE"
    assert names.is_lookalike("alice", iter(["Bob", "Al\u0456ce"])) == "Al\u0456ce"


def test_name_key_is_case_insensitive_nfkc_and_blind_to_invisibles() -> None:
    key = names.name_key("Alice")
    assert key == "alice"
    fullwidth = "\uff21\uff4c\uff49\uff43\uff45"
    for variant in ("ALICE", "aLiCe", fullwidth, "Al\u200cice", "\u0430lice"):
        assert names.name_key(variant) == key
    assert names.name_key("Stra\u00dfe") == names.name_key("STRASSE")  # casefold, not lower
    assert names.name_key("Bob") != names.name_key("Rob")
    # Session lookup by name_key: a name with small Cyrillic look-alikes is the same room.
    assert names.name_key("T\u0435\u0430m") == names.name_key("team")


def test_lookalike_keys_are_small_letters_as_typed_and_capitals() -> None:
    assert names.lookalike_keys("Ian") == ("ian", "lan", "lAN")
    assert names.lookalike_keys("B\u043eb") == ("bob", "Bob", "BOB")


def test_skeleton_follows_tr39_prototypes() -> None:
    assert names.skeleton("I1|") == "lll"
    assert names.skeleton("0") == "O"
    assert names.skeleton("m") == "rn"
    assert names.skeleton("\u0441\u0440\u043e") == "cpo"  # Cyrillic с р о
    assert names.skeleton("\u0451") == "\u00eb"  # Cyrillic ё: е mapped, diaeresis kept
    assert names.skeleton("abc") == "abc"


def test_confusable_table_is_well_formed() -> None:
    seen: set[int] = set()
    for proto, codes in names._CONFUSABLES_HEX.items():
        assert proto and all(c.isascii() and c.isprintable() for c in proto)
        for code in codes.split():
            value = int(code, 16)
            assert value >= 0x80, code
            assert value not in seen, f"{code} listed twice"
            seen.add(value)
            ch = chr(value)
            # A source NFKC rewrites would never reach the table.
            assert unicodedata.normalize("NFKC", ch) == ch, code
    # The prototypes are fixed points: a skeleton is stable.
    for proto in names._CONFUSABLES_HEX:
        assert names.skeleton(names.skeleton(proto)) == names.skeleton(proto)


# --- chat text --------------------------------------------------------------------------


def test_rtl_override_and_every_bidi_control_are_removed_from_chat() -> None:
    # The classic: "exe.txt" reversed so a file looks like a text file.
    assert names.clean_chat_text("see \u202etxt.exe") == "see txt.exe"
    for ch in names.BIDI_CONTROLS:
        assert names.clean_chat_text(f"a{ch}b") == "ab", f"U+{ord(ch):04X}"
    assert len(names.BIDI_CONTROLS) == 12


def test_right_to_left_letters_stay() -> None:
    arabic = "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643\u0645"
    hebrew = "\u05e9\u05dc\u05d5\u05dd"
    assert names.clean_chat_text(arabic) == arabic
    assert names.clean_chat_text(f"{hebrew} and English") == f"{hebrew} and English"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("line one\nline two\tcol", "line one\nline two\tcol"),
        ("a\r\nb\rc\x85d\u2028e\u2029f", "a\nb\nc\nd\ne\nf"),
        ("zero\u200bwidth\u2060joiner\ufeff", "zerowidthjoiner"),
        ("bell\x07 del\x7f c1\x9b", "bell del c1"),
        ("lone \ud800 surrogate", "lone  surrogate"),
        ("non\ufffe char\ufdd0", "non char"),
        ("hangul\u3164filler", "hangulfiller"),
        ("tag\U000e0041s alone", "tags alone"),
        ("  spaces kept  ", "  spaces kept  "),
        ("", ""),
    ],
)
def test_chat_cleaning_table(raw: str, clean: str) -> None:
    assert names.clean_chat_text(raw) == clean


@pytest.mark.parametrize(
    "text",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: ZWJ sequence
        "\u2764\ufe0f",  # red heart with emoji presentation selector
        "\u845b\U000e0100",  # 葛 with an ideographic variation selector (Japanese names)
        "\u1820\u180b",  # Mongolian letter with a free variation selector
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # Scotland
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with ZWNJ
        "\u0600\u0661\u0662",  # Arabic number sign (visible) before digits
        "caf\u00e9 \u00fcber \u674e\u96f7 \U0001f600",
    ],
)
def test_chat_keeps_what_draws_or_shapes(text: str) -> None:
    assert names.clean_chat_text(text) == text


def test_cleaned_chat_always_encodes_on_the_wire() -> None:
    # A lone surrogate parsed from JSON ("\ud800") cannot be encoded as UTF-8: once
    # cleaned, every message survives utils.dump_json.
    hostile = "x\ud800\udfff\ud83d y\u202e\x00"
    header = utils.parse_header(utils.dump_json({"type": "chat", "message": "ok"}))
    header["message"] = names.clean_chat_text(hostile)
    assert utils.parse_header(utils.dump_json(header))["message"] == "x y"


def test_cleaning_is_idempotent() -> None:
    sample = "a\u202eb\r\nc\u200dd\U0001f3f4\U000e0067\U000e007f\u200b"
    once = names.clean_chat_text(sample)
    assert names.clean_chat_text(once) == once
