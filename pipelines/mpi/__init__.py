"""The Master Person Index: stable IDs, golden records, publish, steward decisions.

- :mod:`pipelines.mpi.ids`: map this run's clusters to the previous MPI IDs; events;
- :mod:`pipelines.mpi.golden`: golden records by survivorship rules;
- :mod:`pipelines.mpi.publish`: the one-transaction publish;
- :mod:`pipelines.mpi.decisions`: steward must-link / cannot-link decisions;
- :mod:`pipelines.mpi.incremental`: how an incremental run compares with a full relink.

docs/mpi.md describes them for users.
"""
