"""Append each chunk's registers to their files, each in its register's own file format."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.synth.registers import COLUMNS


@dataclass(frozen=True)
class FileFormat:
    filename: str
    kind: str = "csv"  # csv | parquet
    encoding: str = "utf-8"
    delimiter: str = ","
    line_end: str = "\n"


FORMATS: dict[str, FileFormat] = {
    # Old civil-registry systems export Windows-1251 with ";" and CRLF line ends.
    "civil": FileFormat("civil.csv", encoding="cp1251", delimiter=";", line_end="\r\n"),
    "national_id": FileFormat("national_id.csv"),
    "electoral": FileFormat("electoral.csv"),
    "pension": FileFormat("pension.csv", delimiter=";"),
    "health": FileFormat("health.parquet", kind="parquet"),
}
TRUTH_FILE = "truth.csv"


class ExtractWriter:
    """Open output files; :meth:`append` writes one chunk of every register and the truth."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.rows: dict[str, int] = dict.fromkeys(FORMATS, 0)
        self._text: dict[str, IO[str]] = {}
        self._parquet: dict[str, pq.ParquetWriter] = {}
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, fmt in FORMATS.items():
            path = out_dir / fmt.filename
            if fmt.kind == "csv":
                handle = open(path, "w", encoding=fmt.encoding, newline="")
                self._text[name] = handle
                self._write_rows(handle, fmt, [COLUMNS[name]])
            else:
                schema = pa.schema([(c, pa.string()) for c in COLUMNS[name]])
                self._parquet[name] = pq.ParquetWriter(path, schema, compression="zstd")
        self._truth = open(out_dir / TRUTH_FILE, "w", encoding="utf-8", newline="")
        self._truth.write("register,record_id,person_id\n")

    @staticmethod
    def _write_rows(handle: IO[str], fmt: FileFormat, rows) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=fmt.delimiter, lineterminator=fmt.line_end)
        writer.writerows(rows)
        handle.write(buffer.getvalue())

    def append(
        self, tables: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray]
    ) -> None:
        for name, columns in tables.items():
            fmt = FORMATS[name]
            if fmt.kind == "csv":
                self._write_rows(self._text[name], fmt, zip(*columns.values(), strict=True))
            else:
                arrays = [
                    pa.array(np.where(values == "", None, values), type=pa.string())
                    for values in columns.values()
                ]
                self._parquet[name].write_table(pa.Table.from_arrays(arrays, names=list(columns)))
            record_ids = next(iter(columns.values()))
            self._truth.write(
                "".join(
                    f"{name},{rid},{pid}\n"
                    for rid, pid in zip(record_ids.tolist(), truth[name].tolist(), strict=True)
                )
            )
            self.rows[name] += len(record_ids)

    def close(self) -> None:
        for handle in self._text.values():
            handle.close()
        for writer in self._parquet.values():
            writer.close()
        self._truth.close()
