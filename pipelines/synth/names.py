"""Name, place and spelling tables of the synthetic country (Tajik Cyrillic is the source).

Every name a register writes is an index into a small vocabulary (given names, surname
forms, patronymic forms, places). Each vocabulary is rendered once under every spelling
scheme into a 2-D table ``[scheme, index]``, so a chunk of a million records picks its
strings by fancy indexing instead of transliterating row by row.

The names are invented or common Tajik names; the lists are ordered from the most to the
least common, and draws follow a Zipf-like law over that order.

A ``+`` inside a given name marks a compound name ("Муҳаммад+алӣ"): it is written joined
("Муҳаммадалӣ") and, as a variant, split ("Муҳаммад Алӣ").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------
# Source tables (Tajik Cyrillic)
# --------------------------------------------------------------------------------------

MALE_NAMES = """
Муҳаммад Абдулло Фирӯз Шаҳром Далер Ҷамшед Фаридун Бахтиёр Исмоил Алишер Умед Сино
Рустам Фаррух Азиз Комрон Мансур Сӯҳроб Манучеҳр Зафар Муҳаммад+алӣ Шамсиддин Нуриддин
Хуршед Меҳроб Абду+раҳмон Аҳмад Маҳмуд Юсуф Иброҳим Исҳоқ Ёқуб Мусо Исо Ҳасан Ҳусейн Алӣ
Умар Усмон Карим Раҳим Назар Саид Шариф Собир Олим Одил Нозим Носир Бобоҷон Раҷаб
Шер+алӣ Давлат Ашӯр Қурбон Наврӯз Баҳодур Тоҳир Ғайрат Ғафур Ҳамид Ҳабиб Ҳаким Ҷалол
Иқбол Икром Илҳом Муҳиддин Зайниддин Камолиддин Ҷамолиддин Бадриддин Сироҷиддин
Низомиддин Файзулло Нурулло Ҳабибулло Аминулло Саъдулло Парвиз Сиёвуш Афшин Дилшод
Шоҳрух Шерзод Беҳрӯз Баҳром Исфандиёр Хусрав Азамат Аброр Акбар Асрор Аъзам Бахтовар
Валӣ Восеъ Гул+мурод Даврон Ёр+муҳаммад Зоир Зоҳир Илёс Қодир Қаюм Латиф Лутфулло Маъруф
Мирзо Мирзо+алӣ Мурод Музаффар Наим Неъмат Нур+муҳаммад Обид Равшан Раҳмон Раҳматулло
Саид+аҳмад Салим Сафар Султон Тағой Тошмурод Убайд Фазлиддин Файз+алӣ Хайрулло Холмурод
Ҳайдар Ҳоким Шодмон Шоҳин Шуҳрат Эраҷ Эргаш Юнус Ҷӯрабек Ҷумъа Қаҳҳор Ғулом Абдул+қодир
Муҳаммад+юсуф Анвар Бурҳон Ғиёс Ислом Кароматулло Маҳмадалӣ Наҷиб Рамазон Ризо Самад
Сайф Тимур Фатҳулло Шоҳмирзо Ҳамза Ҳотам Ҷовид Қиём Ғолиб
"""

FEMALE_NAMES = """
Зарина Мадина Нигина Шаҳноза Фарзона Гулнора Манижа Меҳрангез Нилуфар Парвина Самира
Сурайё Таҳмина Фотима Ойша Зулайхо Малика Мавҷуда Дилноза Дилором Дилафрӯз Гул+чеҳра
Гулбаҳор Гулшан Гулрухсор Гулсара Гулнисо Зебо Зебу+нисо Зуҳро Комила Латофат Лайло Лола
Моҳира Маҳина Меҳринисо Муниса Мунира Мастона Наргис Насиба Нозанин Нодира Озода Парвона
Рухшона Руқия Саодат Сайёра Сарвиноз Сабоҳат Севара Ситора Сумая Туҳфа Умеда Ферӯза
Ҳабиба Ҳанифа Ҳилола Ҳусния Шабнам Шамсия Шарифа Шоира Шоҳида Ширин Шукрона Ёсуман
Хадича Ҷамила Ҷӯрагул Қутбия Қумрӣ Ғунча Муҳаббат Маҳбуба Мавлуда Биби+сора Гулҷаҳон
Дилбар Дилрабо Нигора Нафиса Одина Раъно Роза Санавбар Тоҷинисо Тоҳира Фарангис Фарогат
Хуршеда Ҳафиза Шаҳло Ҳамида Мукаррама Мӯътабар Нисо Парисо Меҳрона Ҳумайро Асал Оиша
Дилшода Бунафша Гулноз Анора Бибиҷон Гавҳар Дилдора Зайнаб Зумрад Камола Марям Мижгона
Нусрат Рисолат Сабина Тамана Шодмона Ҷаҳон Қандигул Ғулбаҳор
"""

# Surname roots: the stems of the family names (Карим -> Каримов, Каримова, Каримзода).
EXTRA_ROOTS = """
Бобо Тошмат Турсун Эшон Назри Ниёз Ашраф Бадал Ғоиб Дӯст Ёдгор Иззат Камол Маҳмад Наҷм
Пир Раҳмат Сангин Тағо Хоҷа Шодӣ Ҷума Аминҷон Ғаффор Ҳакназар Шоҳ Зиё Хол Амин Наби
Қаландар Мирзоҳасан Ҳамроҳ Ҷӯра Қосим Ғуломҳусейн Саттор Сатторқул Худойберди Қурбоналӣ
Бойназар Давронбек Мирали Нуралӣ Исмат Ҳикмат Ҳидоят Шарофиддин Ёрмат Мӯмин Муллоҷон
Худоёр Ашурмат Абдураҳим Абдусаттор Абдуҷаббор Абдулҳамид Рӯзӣ Навҷувон Зокир Ҳотам
Сайфулло Давлатёр Юлдош Қаҳрамон Нурмат Акрам Ғани Собитов Шукур Оқил Ҷаббор Вафо
"""

REGIONS = {
    # region: districts (Tajik Cyrillic), with the region's share of the population
    "Душанбе": (0.10, "Сино;Фирдавсӣ;Исмоили Сомонӣ;Шоҳмансур"),
    "Суғд": (
        0.29,
        "Хуҷанд;Истаравшан;Панҷакент;Конибодом;Исфара;Бобоҷон Ғафуров;Ашт;Зафаробод;"
        "Спитамен;Ҷаббор Расулов",
    ),
    "Хатлон": (
        0.35,
        "Бохтар;Кӯлоб;Данғара;Восеъ;Ҳамадонӣ;Шаҳритус;Қубодиён;Ёвон;Вахш;Фархор;Муъминобод",
    ),
    "НТМ": (0.24, "Ваҳдат;Ҳисор;Рӯдакӣ;Турсунзода;Шаҳринав;Файзобод;Рашт;Варзоб"),
    "ВМКБ": (0.02, "Хоруғ;Ишкошим;Роштқалъа;Шуғнон;Ванҷ;Дарвоз;Мурғоб"),
}

LOCALITIES = """
Навобод Гулистон Сомониён Дӯстӣ Истиқлол Чорбоғ Ғончӣ Қаротоғ Ҷилликӯл Нуробод Янгиобод
Оқсу Сарбанд Хушёрӣ Лахш Ғарм Ҳулбук Теппаи Самарқандӣ Чашмасор Бешкент Ҷиликӯл Обикиик
Қалъаи Ҳумб Ғулистон Ширинобод Зарнисор Обшорон Ғозималик Калининобод Қизилқалъа
Чоряккорон Мехнатобод Дашти Гулӣ Кӯктош Шарора Роғун Киров Фрунзе Октябр Боғи Мехр
Ҳайдаробод Сари Хосор Саричашма Тангай Ҷарбулоқ Қурганча Олимтой Ниёзбек Ёвонӣ Пахтаобод
"""

STREETS = """
Рӯдакӣ;Исмоили Сомонӣ;Айнӣ;Фирдавсӣ;Саъдии Шерозӣ;Борбад;Ҳофизи Шерозӣ;Бобоҷон Ғафуров;
Мирзо Турсунзода;Лоҳутӣ;Навоӣ;Сино;Дӯстӣ;Истиқлол;Ваҳдат;Гулистон;Бӯстон;Пушкин;Гагарин;
Ленин;Карл Маркс;Шотемур;Нисормуҳаммад;Қаҳҳоров;Ҷомӣ;Ҳусейнзода;Лоиқ Шерали
"""

# --------------------------------------------------------------------------------------
# Spelling schemes
# --------------------------------------------------------------------------------------

TJ_TO_RU = str.maketrans("ҳҷқғӯӣҲҶҚҒӮӢ", "хчкгуиХЧКГУИ")
"""Tajik letters to the Russian letters that cp1251-era systems wrote instead."""

_LATIN_BASE = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "з": "z", "и": "i",
    "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r",
    "с": "s", "т": "t", "у": "u", "ф": "f", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch",
    "ъ": "", "ы": "y", "ь": "", "э": "e", "ӯ": "u", "ӣ": "i", " ": " ", "-": "-", ".": ".",
}


@dataclass(frozen=True)
class Scheme:
    """One way of spelling a Tajik name: a script, letter choices and the Russified о→а."""

    name: str
    latin: bool
    russian_letters: bool = False  # Cyrillic: Tajik letters replaced by Russian ones
    russify_o: bool = False  # Tajik long "о" written "а" in the name stems (Рахмон -> Рахман)
    letters: tuple[tuple[str, str], ...] = ()

    def spell(self, stem: str, suffix: str = "") -> str:
        """Spell ``stem`` + ``suffix`` (lower-case Cyrillic) in this scheme, capitalised."""
        if self.russify_o:
            stem = stem.replace("о", "а")
        text = stem + suffix
        if not self.latin:
            if self.russian_letters:
                text = text.translate(TJ_TO_RU)
        else:
            table = dict(_LATIN_BASE)
            table.update(self.letters)
            text = "".join(table.get(ch, ch) for ch in text)
        return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def _latin(**letters: str) -> tuple[tuple[str, str], ...]:
    cyr = {"kh": "х", "h": "ҳ", "j": "ҷ", "q": "қ", "gh": "ғ", "yo": "ё", "yu": "ю",
           "ya": "я", "zh": "ж"}
    return tuple((cyr[key], value) for key, value in letters.items())


SCHEMES: tuple[Scheme, ...] = (
    Scheme("cyr_tj", latin=False),
    Scheme("cyr_ru", latin=False, russian_letters=True),
    Scheme("cyr_ru_a", latin=False, russian_letters=True, russify_o=True),
    Scheme("lat_tj", True, letters=_latin(kh="kh", h="h", j="j", q="q", gh="gh", yo="yo",
                                           yu="yu", ya="ya", zh="zh")),
    Scheme("lat_ru", True, letters=_latin(kh="kh", h="kh", j="dzh", q="k", gh="g", yo="e",
                                           yu="yu", ya="ya", zh="zh")),
    Scheme("lat_icao", True, letters=_latin(kh="kh", h="h", j="j", q="k", gh="g", yo="e",
                                             yu="iu", ya="ia", zh="zh")),
    Scheme("lat_x", True, letters=_latin(kh="x", h="h", j="j", q="q", gh="g", yo="yo",
                                          yu="yu", ya="ya", zh="j")),
    Scheme("lat_ru_a", True, russify_o=True, letters=_latin(kh="kh", h="kh", j="dzh", q="k",
                                                             gh="g", yo="e", yu="yu",
                                                             ya="ya", zh="zh")),
)
SCHEME_INDEX = {scheme.name: i for i, scheme in enumerate(SCHEMES)}
CYRILLIC_SCHEMES = np.array([0, 1, 2])
LATIN_SCHEMES = np.array([3, 4, 5, 6, 7])

# --------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------

# Surname forms: index = root * N_SURNAME_FORMS + form.
SF_RU_M, SF_RU_F, SF_ZODA, SF_ZOD, SF_IYON, SF_PUR, SF_FAR = range(7)
N_SURNAME_FORMS = 7
# Patronymic forms: index = father's given-name index * N_PATRONYMIC_FORMS + form.
PF_RU_M, PF_RU_F, PF_ZODA, PF_BARE = range(4)
N_PATRONYMIC_FORMS = 4

_VOWELS = set("аоеуӯиӣяёюэ")


def _words(block: str) -> list[str]:
    return [w for w in block.split() if w]


def _surname_suffix(root: str, form: int) -> tuple[str, str]:
    """(stem, suffix) of a surname form; the stem is where a Russified о→а may apply."""
    stem = root
    soft = root[-1] in _VOWELS
    if root[-1] in "ӣи" and form in (SF_RU_M, SF_RU_F, SF_IYON):
        stem = root[:-1] + "и"
    if form == SF_RU_M:
        return stem, "ев" if soft else "ов"
    if form == SF_RU_F:
        return stem, "ева" if soft else "ова"
    if form == SF_IYON:
        return (stem[:-1], "иён") if stem[-1] == "и" else (stem, "иён")
    return stem, {SF_ZODA: "зода", SF_ZOD: "зод", SF_PUR: "пур", SF_FAR: "фар"}[form]


def _patronymic_suffix(father: str, form: int) -> tuple[str, str]:
    if form == PF_ZODA:
        return father, "зода"
    if form == PF_BARE:
        return father, ""
    female = form == PF_RU_F
    if father[-1] in "ӣий":
        return father[:-1], "иевна" if female else "иевич"
    if father[-1] in _VOWELS:
        return father, "евна" if female else "евич"
    return father, "овна" if female else "ович"


def _render(pairs: list[tuple[str, str]]) -> np.ndarray:
    """Object table [scheme, index] of (stem, suffix) pairs spelled in every scheme."""
    table = np.empty((len(SCHEMES), len(pairs)), dtype=object)
    for s, scheme in enumerate(SCHEMES):
        table[s] = [scheme.spell(stem, suffix) for stem, suffix in pairs]
    return table


# Abbreviated region names are not transliterated letter by letter.
_REGION_LATIN = {"НТМ": "RRP", "ВМКБ": "GBAO"}


def _render_regions(regions: list[str]) -> np.ndarray:
    table = _render([(r.lower(), "") for r in regions])
    for r, name in enumerate(regions):
        if name in _REGION_LATIN:
            table[:, r] = [_REGION_LATIN[name] if s.latin else name for s in SCHEMES]
    return table


def zipf_weights(n: int, exponent: float = 1.0, offset: float = 1.5) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    return weights / weights.sum()


@dataclass
class Vocabulary:
    """All spelled tables; built once per process (a fraction of a second)."""

    given: np.ndarray  # [scheme, given index]; males first, then females, then split forms
    given_alt: np.ndarray  # joined <-> split compound form; itself for simple names
    n_male: int
    n_female: int
    male_weights: np.ndarray
    female_weights: np.ndarray
    surname: np.ndarray  # [scheme, root * N_SURNAME_FORMS + form]
    n_roots: int
    root_weights: np.ndarray
    patronymic: np.ndarray  # [scheme, male given index * N_PATRONYMIC_FORMS + form]
    regions: list[str]
    region_weights: np.ndarray
    district_region: np.ndarray  # region index of each district
    district: np.ndarray  # [scheme, district]
    region: np.ndarray  # [scheme, region]
    locality: np.ndarray  # [scheme, locality]
    street: np.ndarray  # [scheme, street]


def build_vocabulary() -> Vocabulary:
    male = [w.lower() for w in _words(MALE_NAMES)]
    female = [w.lower() for w in _words(FEMALE_NAMES)]
    base = male + female
    joined = [w.replace("+", "") for w in base]
    compound = [i for i, w in enumerate(base) if "+" in w]
    split = [base[i].replace("+", " ") for i in compound]
    given_alt = np.arange(len(base) + len(split))
    for k, i in enumerate(compound):
        given_alt[i] = len(base) + k
        given_alt[len(base) + k] = i
    given = _render([(w, "") for w in joined + split])

    male_joined = joined[: len(male)]
    roots = list(dict.fromkeys([w for w in male_joined if len(w) > 2]))
    roots += [w.lower() for w in _words(EXTRA_ROOTS) if w.lower() not in roots]
    # Interleave so that the most common roots mix name-derived and other stems.
    surname_pairs = [_surname_suffix(r, f) for r in roots for f in range(N_SURNAME_FORMS)]
    patronymic_pairs = [
        _patronymic_suffix(father, f) for father in male_joined for f in range(N_PATRONYMIC_FORMS)
    ]

    regions = list(REGIONS)
    districts: list[str] = []
    district_region: list[int] = []
    for r, (_, (_, names)) in enumerate(REGIONS.items()):
        for name in names.split(";"):
            districts.append(name.lower())
            district_region.append(r)
    localities = [w.lower() for w in _words(LOCALITIES)]
    streets = [w.strip().lower() for w in STREETS.replace("\n", "").split(";") if w.strip()]

    return Vocabulary(
        given=given,
        given_alt=given_alt,
        n_male=len(male),
        n_female=len(female),
        male_weights=zipf_weights(len(male), 1.05),
        female_weights=zipf_weights(len(female), 1.05),
        surname=_render(surname_pairs),
        n_roots=len(roots),
        root_weights=zipf_weights(len(roots), 0.9, 3.0),
        patronymic=_render(patronymic_pairs),
        regions=regions,
        region_weights=np.array([REGIONS[r][0] for r in regions]) / sum(
            REGIONS[r][0] for r in regions
        ),
        district_region=np.array(district_region),
        district=_render([(d, "") for d in districts]),
        region=_render_regions(regions),
        locality=_render([(loc, "") for loc in localities]),
        street=_render([(s, "") for s in streets]),
    )
