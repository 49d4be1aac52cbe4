"""Names in any script or transliteration scheme → one canonical Latin key.

The key is for *matching*, not for display: it is lowercase ASCII, has no spaces, and is the
same for a name whether the register wrote it in Tajik Cyrillic, Russian Cyrillic, Tajik
Latin, a Russian passport scheme (ICAO 9303, GOST, "popular"), Uzbek Latin, or a
German/Polish-style scheme, as far as those can be told apart. Examples that share a key:

========================================================  ============
Ҳусейнов, Хусейнов, Khuseynov, Husejnov, Xuseinov           huseinav
Ҷӯраев, Джураев, Juraev, Dzhuraev, Jurayev                  jurayev
Ғафуров, Gafurov, Ghafurov                                  gafurav
Юсуфов, Iusufov, Yusufov                                    yusufav
Ёров, Еров, Yorov, Erov                                     erav
Абдулло, Abdullo, Abdulla                                   abdula
========================================================  ============

Pipeline for one name (:func:`name_tokens`, :func:`name_key`):

1. HTML tags and entities are removed (registers exported from web forms carry them),
   then Unicode NFKC and case folding.
2. Cyrillic letters (Russian, Tajik ҳ ҷ қ ғ ӯ ӣ, and the Uzbek/Kazakh/Kyrgyz extras) are
   transliterated letter by letter; Latin letters with a meaning of their own in a national
   alphabet (ş ç ğ ž č š ə ı ...) become their digraphs; other diacritics are dropped
   (ū → u, ī → i). Uzbek ``oʻ`` is ``u`` (it is ``ў``, written ``у`` in Russian: Oʻktam =
   Ўктам = Уктам); other apostrophes (ʼ ' ` ’ ʻ) are dropped, so ``Isma'il`` is ``Ismail``
   and ``oʻgʻli`` is ``ugli``. Any other character (space, hyphen, dot, digit) separates
   words.
3. Each word is folded by :func:`fold_latin` (the rules are listed there) and the words
   are joined, so ``Muhammad Ali``, ``Muhammad-Ali`` and ``Muhammadali`` share a key.

Trade-offs, chosen on purpose:

- **Russified о → а**: every ``o`` becomes ``a``. Tajik ``о`` is written ``а`` in the Russian
  and Uzbek forms of the same name (Abdullo/Abdulla, Rahmon/Rakhman, Olim/Alim, Sobir/Sabir,
  Nodira/Nadira), and this is the commonest difference between registers. The price: names
  that differ only by o/a collide (Roza/Raza). The surname suffix ``-ov`` is therefore ``-av``
  in keys.
- **Double letters are collapsed**: Zarrina and Zarina, Abdullo and Abdulo share a key.
- **x is kh**, as in Uzbek Latin and Tajik usage (Xolmatov = Kholmatov); an English ``x``
  (Alexander) becomes ``h`` as well, consistently. A lone **c** is read the English way
  (Catherine = Katherine; Cecilia → sesiliya), not as the ISO 9/Polish ``ц``.
- **j** is ``ҷ``/``дж`` (Juraev = Dzhuraev) except after a vowel and before a consonant or the
  end, where it is the glide of Polish/German schemes (Husejnov = Huseynov, Sajdov = Saidov).
  German ``J`` for ``Ю``/``Я`` before a vowel (Jussupow) is *not* recognised.
- **ё** is ``yo``; at the start of a word ``yo`` and ``ye`` are ``e`` because Russian-scheme
  documents write Ёров as Еров/Erov and Евгений as Evgeniy or Yevgeniy. Inside a word
  ``ё`` stays ``yo`` (and then ``ya`` by the о → а rule: Зиёев = Зияев).
- Words are folded one by one and then joined; a rule at a word boundary can therefore give
  ``Abdu Ergash`` and ``Abduergash`` different keys. Such joins are rare.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

__all__ = ["fold_latin", "name_key", "name_tokens", "to_latin"]

_CYRILLIC: dict[str, str] = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "yo", "ж": "zh",
    "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya",
    # Tajik
    "ҳ": "h", "ҷ": "j", "қ": "q", "ғ": "gh", "ӯ": "u", "ӣ": "i",
    # Uzbek, Kazakh, Kyrgyz, Bashkir, Tatar, Ukrainian, Belarusian
    "ў": "u", "ә": "a", "ө": "o", "ү": "u", "ұ": "u", "ң": "ng", "һ": "h", "і": "i",
    "ї": "yi", "є": "ye", "ґ": "g", "ҙ": "z", "ҫ": "s", "ӑ": "a", "ӗ": "e", "ҝ": "g",
    "ӂ": "zh", "ҹ": "j", "ӏ": "",
}

# Latin letters of national alphabets whose sound a plain diacritic strip would lose.
_LATIN_SPECIAL: dict[str, str] = {
    "ş": "sh", "ș": "sh", "š": "sh", "ç": "ch", "č": "ch", "ć": "ch", "ž": "zh", "ğ": "g",
    "ı": "i", "ə": "a", "ñ": "n", "ŋ": "ng", "ł": "l", "ø": "o", "æ": "ae", "œ": "oe",
    "đ": "dj", "ð": "d", "þ": "th", "ß": "ss",
}

_TRANSLATE = str.maketrans({**_CYRILLIC, **_LATIN_SPECIAL})

_APOSTROPHES = re.compile(r"[ʼʻʹʽ'`´’‘′]")
# Uzbek Latin oʻ is Cyrillic ў, which Russian documents write у (Oʻktam = Ўктам = Уктам).
_UZBEK_O = re.compile(r"o[ʼʻʹʽ'`´’‘′]")
_TAG = re.compile(r"<[^<>]*>")
_WORD = re.compile(r"[a-z]+")

# Consonant spellings, longest first so that "dzh" wins over "zh" and "shch" over "sh";
# "ch", "sh" and "ts" map to themselves so that a lone "c" does not eat their "c".
_CONSONANTS: dict[str, str] = {
    "shch": "sh", "dsch": "j", "tsch": "ch", "sch": "sh", "dzh": "j", "tsh": "ch",
    "tch": "ch", "cz": "ch", "sz": "sh", "dj": "j", "zh": "j", "kh": "h", "gh": "g",
    "ck": "k", "ch": "ch", "sh": "sh", "ts": "ts", "c": "k", "x": "h", "q": "k", "w": "v",
}
# A lone c is English/Romance (Catherine = Katherine, Cecilia): soft before e/i/y. The ISO 9
# and Polish c for ц is rare in registers and is not recognised.
_SOFT_C = re.compile(r"c(?=[eiy])")
_CONSONANT_RE = re.compile("|".join(sorted(_CONSONANTS, key=len, reverse=True)))

_V = "aeiou"
_J_GLIDE = re.compile(rf"(?<=[{_V}])j(?![{_V}y])")
_INITIAL_I_GLIDE = re.compile(rf"^i(?=[{_V}])")
_INITIAL_IOTATED = re.compile(r"^y[eo]")
_I_BETWEEN_VOWELS = re.compile(rf"(?<=[{_V}])i(?=[aeou])")
_E_AFTER_VOWEL = re.compile(rf"(?<=[{_V}])e")
_GLIDE_AFTER_CONSONANT = re.compile(rf"(?<=[^{_V}y])[iy](?=[aeou])")
_Y_NOT_BEFORE_VOWEL = re.compile(r"y(?![aeou])")
_DOUBLE = re.compile(r"(.)\1+")


def to_latin(text: str) -> str:
    """Clean one raw name and transliterate it to lowercase Latin words (steps 1–2 above).

    The result keeps word separators as single spaces and contains only ``a-z`` and spaces;
    it is *not* yet folded (``Ҷӯраев`` → ``juraev``, ``Dzhuraev`` → ``dzhuraev``).
    """
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _APOSTROPHES.sub("", _UZBEK_O.sub("u", text)).translate(_TRANSLATE)
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(_WORD.findall(text))


@lru_cache(maxsize=65536)
def fold_latin(word: str) -> str:
    """Fold one lowercase ``a-z`` word to its canonical key. The rules, in order:

    1. ``jj`` → ``j``; ``j`` after a vowel and before a consonant or the end → ``y``
       (Husejnov, Sajdov, Nurbaj).
    2. Consonant spellings: shch/sch → sh; tsch/tsh/tch/cz → ch; dzh/dsch/dj/zh → j;
       kh/x → h; gh → g; q/ck → k; w → v; sz → sh; a lone c → s before e/i/y, else k.
    3. ``ii`` → ``i`` (Mariia); ``ou`` → ``u`` (Yousuf).
    4. At the start: ``i`` + vowel → ``y`` + vowel (Iusuf = Yusuf, Iatim = Yatim); then
       ``ye``/``yo`` → ``e`` (Yevgeniy = Evgeniy, Yorov = Erov).
    5. ``yi`` → ``i`` (Sayid = Said); ``i`` between vowels → ``y`` (Kaium = Kayum); ``e``
       after a vowel → ``ye`` (Juraev = Jurayev, Sergeevich = Sergeyevich); ``i`` or ``y``
       between a consonant and a vowel → ``iy`` (Maria = Mariya = Marya, Ilyos = Iliyos).
    6. ``y`` not before a vowel → ``i`` (Huseynov = Huseinov, Kadyrov = Kadirov, -iy → -i).
    7. ``o`` → ``a`` (Russified о → а; see the module docstring).
    8. Runs of one letter collapse to one (Zarrina = Zarina, Abdullo = Abdulo).
    """
    s = word.replace("jj", "j")
    s = _J_GLIDE.sub("y", s)
    s = _CONSONANT_RE.sub(lambda m: _CONSONANTS[m.group(0)], _SOFT_C.sub("s", s))
    s = s.replace("ii", "i").replace("ou", "u")
    s = _INITIAL_I_GLIDE.sub("y", s)
    s = _INITIAL_IOTATED.sub("e", s)
    s = s.replace("yi", "i")
    s = _I_BETWEEN_VOWELS.sub("y", s)
    s = _E_AFTER_VOWEL.sub("ye", s)
    s = _GLIDE_AFTER_CONSONANT.sub("iy", s)
    s = _Y_NOT_BEFORE_VOWEL.sub("i", s)
    s = s.replace("o", "a")
    return _DOUBLE.sub(r"\1", s)


@lru_cache(maxsize=262144)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t for t in (fold_latin(w) for w in to_latin(text).split()) if t)


def name_tokens(text: object) -> tuple[str, ...]:
    """Canonical keys of the words of a name (``"Muhammad Ali"`` → ``("muhamad", "ali")``).

    Missing input (None, NA, NaN) and text without letters give an empty tuple.
    """
    if not isinstance(text, str):
        if text is None or _is_missing(text):
            return ()
        text = str(text)
    return _tokens(text)


def name_key(text: object) -> str | None:
    """Canonical Latin key of a name, words joined; None when there is no letter in it.

    >>> name_key("Ҷӯраев") == name_key("Dzhuraev") == name_key("Jurayev")
    True
    >>> name_key("Muhammad Ali") == name_key("Мухаммадали")
    True
    """
    tokens = name_tokens(text)
    if not tokens:
        return None
    if len(tokens) == 1:
        return tokens[0]
    return _DOUBLE.sub(r"\1", "".join(tokens))


def _is_missing(value: object) -> bool:
    try:
        return bool(value != value)  # NaN and pd.NA-like scalars
    except (TypeError, ValueError):
        return True
