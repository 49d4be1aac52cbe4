"""Drive the generator: chunks of households, rendered and appended to the extract files."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines.synth import calendar as cal
from pipelines.synth.errors import ErrorRates
from pipelines.synth.names import build_vocabulary
from pipelines.synth.population import REFERENCE_DATE, generate_chunk
from pipelines.synth.registers import build_registers, id_spaces
from pipelines.synth.writer import FORMATS, TRUTH_FILE, ExtractWriter

log = logging.getLogger(__name__)

CHUNK_SIZE = 200_000
"""Persons per chunk. Part of the recipe: changing it changes the output for a seed."""
MAX_PERSONS = 50_000_000  # PIN bodies and record ids stay unique well below their spaces
MANIFEST_FILE = "synth.json"


@dataclass(frozen=True)
class SynthSummary:
    out_dir: Path
    persons: int
    rows: dict[str, int]


def generate(
    persons: int,
    seed: int,
    out_dir: Path,
    error_rate: float = 0.05,
    progress: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> SynthSummary:
    """Write the five register extracts, ``truth.csv`` and ``synth.json`` into ``out_dir``.

    The same ``(persons, seed, error_rate)`` always gives byte-identical files. Memory
    depends on ``chunk_size``, not on ``persons``.

    Args:
        persons: number of persons in the country (living and dead).
        seed: seed of every random choice.
        out_dir: folder for the files; existing files of the same names are replaced.
        error_rate: overall error rate (0 = clean registers); see ``errors.ErrorRates``.
        progress: show a progress bar on stderr (None: only when stderr is a terminal).
        chunk_size: persons generated and written at a time.
    """
    if not 0 < persons <= MAX_PERSONS:
        raise ValueError(f"persons must be between 1 and {MAX_PERSONS}, got {persons}")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be between 0 and 1, got {error_rate}")
    vocab = build_vocabulary()
    rates = ErrorRates(error_rate)
    spaces = id_spaces(seed)
    counters = dict.fromkeys(list(FORMATS) + ["civil_cert"], 0)
    writer = ExtractWriter(out_dir)
    n_chunks = -(-persons // chunk_size)
    log.info("generating %d persons in %d chunks into %s", persons, n_chunks, out_dir)
    try:
        # disable=None lets tqdm show the bar only when stderr is a terminal.
        disable = None if progress is None else not progress
        for k in tqdm(range(n_chunks), desc="synth", unit="chunk", disable=disable):
            first = k * chunk_size
            size = min(chunk_size, persons - first)
            rng = np.random.default_rng([seed, k])
            pop = generate_chunk(rng, vocab, size, first)
            tables, truth = build_registers(pop, vocab, rates, rng, spaces, counters)
            writer.append(tables, truth)
    finally:
        writer.close()
    manifest = {
        "generator": "reglink synth",
        "persons": persons,
        "seed": seed,
        "error_rate": error_rate,
        "reference_date": cal.ISO[REFERENCE_DATE],
        "chunk_size": chunk_size,
        "files": {name: fmt.filename for name, fmt in FORMATS.items()} | {"truth": TRUTH_FILE},
        "rows": writer.rows,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d register rows", sum(writer.rows.values()))
    return SynthSummary(out_dir, persons, dict(writer.rows))
