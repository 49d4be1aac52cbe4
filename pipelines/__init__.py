"""The steps of a reglink run: extract, validate, standardise, link, publish, report."""

__version__ = "0.1.0"
