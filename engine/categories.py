"""The one category vocabulary: every free-text stem or instrument name falls in one of
``CATEGORIES``. The library (a stem's category from its label), the conditioning of 4-class models
(an instrument name's class), the matcher's category restriction and training all use this table.

Names are matched by *word*, not by substring, so that "custom pad" is not a tom, "bassoon" is not
a bass and "upbeat piano" is not drums: a keyword matches a word that equals it or its plural, and
a few keywords also match as the end of a compound word ("synthbass", "contrabass", "hihat").
"""
from __future__ import annotations

import re

CATEGORIES = ("bass", "drums", "vocals", "other")

#: category -> keywords, checked in this order (the first category with a matching word wins)
KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("drums", ("drum", "drumkit", "kit", "percussion", "perc", "kick", "snare", "hat", "hihat", "cymbal",
               "ride", "crash", "tom", "shaker", "tambourine", "conga", "bongo", "clap", "cajon", "timbale",
               "cowbell", "breakbeat")),
    ("bass", ("bass", "bassline")),
    ("vocals", ("vocal", "vox", "voice", "singer", "sing", "singing", "choir", "rap", "rapper", "chant")),
)
#: keywords that also match the end of a longer word ("synthbass", "hihat", "backvocal")
SUFFIXES = ("bass", "hat", "drum", "drums", "vocal", "vocals")


def words(name: str) -> list[str]:
    """Lower-case words of a name: ``"Hi-Hat_02"`` -> ``["hi", "hat"]`` (digits dropped)."""
    return [w for w in re.split(r"[^a-z]+", name.lower()) if w]


def _matches(word: str, kw: str) -> bool:
    return word in (kw, kw + "s", kw + "es") or (kw in SUFFIXES and word.endswith(kw) and len(word) > len(kw) + 2)


#: words that make a name pitched whatever else it says: GM's "chromatic percussion" family
#: (vibraphone, marimba, bells) is played in key, so it is "other", not drums
PITCHED = ("chromatic",)


def category_of(name: str) -> str:
    """The category of a free-text name ("other" when no keyword matches)."""
    ws = words(name)
    if any(w in PITCHED for w in ws):
        return "other"
    for cat, kws in KEYWORDS:
        if any(_matches(w, kw) for w in ws for kw in kws):
            return cat
    return "other"


def class_index(category: str) -> int:
    """Index of a category in ``CATEGORIES``; any other string counts as "other"."""
    c = category.strip().lower()
    return CATEGORIES.index(c) if c in CATEGORIES else CATEGORIES.index("other")
