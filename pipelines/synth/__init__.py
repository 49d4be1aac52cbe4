"""A synthetic country: persons in households and five register extracts with known truth.

``reglink synth --persons N --seed S --out DIR`` writes ``civil.csv`` (cp1251),
``national_id.csv``, ``electoral.csv``, ``pension.csv``, ``health.parquet``, ``truth.csv``
(register, record_id, person_id; never read by the pipeline) and ``synth.json``.
See README.md, section The synthetic country.
"""

from pipelines.synth.generate import CHUNK_SIZE, SynthSummary, generate

__all__ = ["CHUNK_SIZE", "SynthSummary", "generate"]
