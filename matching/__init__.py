"""reglink's record-linkage engine: pure functions over DataFrames (no I/O, no Airflow, no DB)."""
