"""The fast (Arrow) CSV reader gives exactly what pandas' reader gives, errors included.

pandas' reading is the reference: each case is read twice, once as the extract reads it and
once with the Arrow reader switched off, and the canonical chunks (values, dtypes, row
numbers, chunk boundaries) or the error messages must be the same. The canonicalisation
steps done in Arrow (trimming, code lists) and the dates parsed once per distinct text are
compared with the pandas code they replace.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import extract
from pipelines.errors import ExtractError
from pipelines.extract import iter_register
from pipelines.registers import load_register_config


def write_register(tmp_path: Path, data: bytes, *, encoding: str = "utf-8",
                   delimiter: str = ";", header: bool = True) -> tuple[object, Path]:
    config_path = tmp_path / "config" / "registers" / "people.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(textwrap.dedent(f"""\
        source: {{kind: file, path: people.csv, encoding: {encoding},
                  delimiter: "{delimiter.encode('unicode_escape').decode()}",
                  header: {str(header).lower()}}}
        """), encoding="utf-8")
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    (source / "people.csv").write_bytes(data)
    return load_register_config(config_path), source


def read(config, source: Path, chunksize: int) -> tuple:
    """("ok", [(first source_row, chunk)...]) or ("error", message)."""
    try:
        chunks = list(iter_register(config, source, chunksize=chunksize))
    except ExtractError as exc:
        return ("error", str(exc))
    return ("ok", [(int(c["source_row"].iloc[0]) if len(c) else None, c) for c in chunks])


def assert_same(fast: tuple, reference: tuple) -> None:
    assert fast[0] == reference[0], (fast, reference)
    if fast[0] == "error":
        assert fast[1] == reference[1]
        return
    assert [r for r, _ in fast[1]] == [r for r, _ in reference[1]]
    for (_, a), (_, b) in zip(fast[1], reference[1], strict=True):
        pd.testing.assert_frame_equal(a, b)


class PandasCalls:
    """Counts the files read by pandas (the Arrow reader gave up or was not tried)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        original = extract._CsvSource._pandas_chunks

        def counted(source, *args, **kwargs):
            self.count += 1
            return original(source, *args, **kwargs)

        monkeypatch.setattr(extract._CsvSource, "_pandas_chunks", counted)


def read_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, *,
              chunksize: int = 3, **options) -> tuple[tuple, tuple, int]:
    """The extract's reading, pandas' reading, and how many files pandas read the first time."""
    config, source = write_register(tmp_path, data, **options)
    calls = PandasCalls(monkeypatch)
    fast = read(config, source, chunksize)
    fell_back = calls.count
    with monkeypatch.context() as patch:
        patch.setattr(extract._CsvSource, "_arrow_can_read", lambda source: False)
        reference = read(config, source, chunksize)
    return fast, reference, fell_back


def test_a_plain_cp1251_export_is_read_by_arrow_as_pandas_reads_it(tmp_path, monkeypatch):
    rows = ["ID;FIO;DR;ADRES"] + [
        f'{i};Каримов Алишер {i};{i % 28 + 1:02d}.05.1960;"ул. Рудаки; д. {i}, ""А"""'
        for i in range(1, 26)
    ]
    data = ("\r\n".join(rows) + "\r\n").encode("cp1251")
    fast, reference, fell_back = read_both(tmp_path, monkeypatch, data, encoding="cp1251",
                                           chunksize=4)
    assert fell_back == 0  # the fast reader did read it
    assert_same(fast, reference)
    assert [r for r, _ in fast[1]] == [1, 5, 9, 13, 17, 21, 25]
    assert fast[1][0][1]["src.ADRES"].iloc[0] == 'ул. Рудаки; д. 1, "А"'


CASES = {
    "quoted delimiter, quote and line break": b'A;B\n"x;y";"say ""hi"""\n"two\nlines";z\n',
    "quoted CRLF inside a value": b'A;B\r\n"a\r\nb";c\r\n',
    "text after a closing quote": b'A;B\n"ab"cd;e\n',
    "quote inside an unquoted value": b'A;B\nab"cd;e\n',
    "empty and quoted empty fields": b'A;B;C\n;"";\n;;\n',
    "blank lines": b'\n\nA;B\n\n1;2\n\n\n3;4\n\n',
    "no line break at the end": b'A;B\n1;2',
    "utf-8 byte order mark": b'\xef\xbb\xbfA;B\n1;2\n',
    "header only": b'A;B\n',
    "duplicate header names": b'A;A\n1;2\n',
    "empty header name": b'A;B;\n1;2;3\n',
    "line of spaces": b'A;B\n1;2\n   \n3;4\n',
    "line of spaces before the header": b'  \nA;B\n1;2\n',
    "short row": b'A;B;C\n1;2;3\n4;5\n',
    "long row": b'A;B\n1;2\n3;4;5\n',
    "every row one field longer": b'A;B\n1;2;3\n4;5;6\n',
    "file ends inside quotes (last column)": b'A;B\n1;2\n3;"open\n',
    "file ends inside quotes (first column)": b'A;B\n1;2\n"open;3\n',
    "NUL byte": b'A;B\n1;x\x00y\n',
    "carriage returns only": b'A;B\r1;2\r\r;3\r',
    "carriage return inside quotes": b'A;B\n"a\rb";c\n',
    "undecodable byte": b'A;B\n1;2\n3;\xff\n',
    "one column": b'NAME\nKarimov\n  \nAli\n',
}


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("chunksize", [1, 2, 1000])
def test_awkward_files_read_as_pandas_reads_them(tmp_path, monkeypatch, data, chunksize):
    fast, reference, _ = read_both(tmp_path, monkeypatch, data, chunksize=chunksize)
    assert_same(fast, reference)


def test_headerless_files_read_as_pandas_reads_them(tmp_path, monkeypatch):
    for i, data in enumerate([b'V1|x|0012\nV2|y|0099\n', b'V1|x\nV2|y|z\n', b'V1|"x\n']):
        fast, reference, _ = read_both(tmp_path / str(i), monkeypatch, data, delimiter="|",
                                       header=False)
        assert_same(fast, reference)


def test_undecodable_bytes_after_chunks_were_given_out(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "_ARROW_BLOCK_BYTES", 1 << 16)
    # Far enough into the file that reading the header does not decode it.
    rows = "".join(f"{i};Каримов\n" for i in range(60_000))
    data = f"ID;FIO\n{rows}".encode("cp1251") + b"x;\x98\n"  # 0x98: no cp1251 character
    fast, reference, fell_back = read_both(tmp_path, monkeypatch, data, encoding="cp1251",
                                           chunksize=20_000)
    assert fell_back == 1
    assert fast[0] == "error" and "line 60002: cannot be decoded as cp1251" in fast[1]
    assert_same(fast, reference)


def test_file_ending_inside_quotes_is_the_same_error(tmp_path, monkeypatch):
    data = b"ID;FIO\n" + b"".join(b"%d;x\n" % i for i in range(30)) + b'31;"Karim'
    fast, reference, _ = read_both(tmp_path, monkeypatch, data, chunksize=4)
    assert fast[0] == "error" and "EOF inside string" in fast[1]
    assert_same(fast, reference)


def test_rows_across_many_small_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "_ARROW_BLOCK_BYTES", 48)
    rows = [f'{i};"a long value; with {i} ""quotes""\nand a line break";x' for i in range(30)]
    data = ("ID;V;W\n" + "\n".join(rows) + "\n").encode()
    fast, reference, fell_back = read_both(tmp_path, monkeypatch, data, chunksize=7)
    assert_same(fast, reference)
    # A row longer than a block is one Arrow does not read; pandas then reads the file.
    monkeypatch.setattr(extract, "_ARROW_BLOCK_BYTES", 16)
    fast, reference, fell_back = read_both(tmp_path / "small", monkeypatch, data, chunksize=7)
    assert fell_back == 1
    assert_same(fast, reference)


def random_csv(rng: random.Random) -> tuple[bytes, dict]:
    delimiter = rng.choice([";", ",", "\t"])
    alphabet = rng.choice(['ab"\n \t', 'aЖ ё"\n\r', f'x{delimiter}"\n\t '])
    newline = rng.choice(["\n", "\r\n", "\r\n", "\r"])
    columns = rng.choice([2, 3, 4])
    lines = [delimiter.join("ABCD"[:columns])]
    for _ in range(rng.randint(0, 12)):
        fields = []
        for _ in range(columns + (rng.choice([-1, 1]) if rng.random() < 0.05 else 0)):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
            special = any(c in value for c in (delimiter, '"', "\n", "\r"))
            if (special and rng.random() < 0.95) or rng.random() < 0.2:
                value = '"' + value.replace('"', '""') + '"'
            fields.append(value)
        lines.append(delimiter.join(fields))
        if rng.random() < 0.1:
            lines.append(rng.choice(["", " "]))
    text = newline.join(lines) + rng.choice(["", newline, newline * 2])
    encoding = rng.choice(["utf-8", "cp1251"])
    return text.encode(encoding), {"encoding": encoding, "delimiter": delimiter}


def test_random_files_read_as_pandas_reads_them(tmp_path, monkeypatch):
    rng = random.Random(20261127)
    fast_reads = 0
    for i in range(100):
        data, options = random_csv(rng)
        fast, reference, fell_back = read_both(tmp_path / str(i), monkeypatch, data,
                                               chunksize=rng.choice([2, 5, 100]), **options)
        assert_same(fast, reference)
        fast_reads += fell_back == 0
    assert fast_reads >= 20  # the comparison did exercise the fast reader


def test_dates_parsed_once_per_distinct_text_equal_row_by_row_parsing():
    rng = np.random.default_rng(5)
    texts = ["15.05.1960", "1.5.1960", "01.01.1960", "00.05.1960", "00.00.1960", "31.02.1960",
             "1960", "soon", "29.02.2000", "29.02.1900", None]
    values = pd.Series(rng.choice(np.array(texts, dtype=object), 500), dtype=pd.StringDtype())
    values.index = pd.RangeIndex(100, 600)
    for fmt in ["%d.%m.%Y", "%Y%m%d"]:
        iso, quality = extract._parse_date(values, fmt)
        expected_iso, expected_quality = extract._parse_distinct_dates(values, fmt)
        pd.testing.assert_series_equal(iso, expected_iso)
        pd.testing.assert_series_equal(quality, expected_quality)
    empty = pd.Series([], dtype=pd.StringDtype())
    assert len(extract._parse_date(empty, "%d.%m.%Y")[0]) == 0


def messy_texts(rng: np.random.Generator, n: int) -> pd.Series:
    pool = np.array(["М", "Ж", " М ", "m", "?", "", "  ", "\tЖ\n", "X", "Y", "\u00a0М", None],
                    dtype=object)
    return pd.Series(rng.choice(pool, n), dtype=pd.StringDtype(),
                     index=pd.RangeIndex(7, 7 + n))


def test_clean_trims_as_pandas_str_strip():
    values = messy_texts(np.random.default_rng(1), 300)
    stripped = values.str.strip()
    pd.testing.assert_series_equal(extract._clean(values), stripped.mask(stripped == ""))


@pytest.mark.parametrize("unknown", ["missing", "keep"])
def test_code_lookup_in_arrow_equals_pandas_map(unknown):
    from pipelines.registers import ColumnSpec

    spec = ColumnSpec(column="POL", codes={"М": "M", "Ж": "F", "X": None}, unknown=unknown)
    values = extract._clean(messy_texts(np.random.default_rng(2), 300))
    stats = extract.ExtractStats()
    got = extract._apply_codes(values, spec, stats, "sex")
    # The row-by-row pandas reading it replaces.
    listed = values.isin(list(spec.codes))
    mapped = values.map(spec.codes).astype(pd.StringDtype())
    expected = mapped.where(listed, values if unknown == "keep" else pd.NA)
    pd.testing.assert_series_equal(got, expected, check_names=False)
    unlisted = int((values.notna() & ~listed).sum())
    assert unlisted > 0
    assert stats.unknown_codes["sex"] == (0 if unknown == "keep" else unlisted)
