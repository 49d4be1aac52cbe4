"""reglink's record-linkage engine: pure functions over DataFrames (no I/O, no Airflow, no DB)."""

from matching.clustering import cluster_records
from matching.errors import MatchingError, MatchingWarning
from matching.evaluation import evaluate_clusters
from matching.linker import Linker
from matching.model import FellegiSunterModel
from matching.settings import LinkageSettings
from matching.standardise import standardise

__all__ = [
    "FellegiSunterModel",
    "LinkageSettings",
    "Linker",
    "MatchingError",
    "MatchingWarning",
    "cluster_records",
    "evaluate_clusters",
    "standardise",
]
