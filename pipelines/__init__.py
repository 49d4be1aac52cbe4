"""The steps of a reglink run: extract, validate, standardise, link, publish, report."""

import os

__version__ = "0.1.0"

# Arrow's allocator (mimalloc) gives memory back to the system 10 ms after it is freed. A
# run's steps free and take gigabytes again and again, and on virtual machines that return
# freed memory to their host (free page reporting, as on our 2-core machines) every page
# taken again costs a host fault: about 2.5 s of system time per GB, measured. Kept for a
# minute, the next allocation reuses it (an incremental run at 1M persons: about 5 s less).
# run_all still releases it between the steps of a full run, whose peak matters. mimalloc
# reads this when pyarrow is loaded, so it is set before anything imports pyarrow; a value
# already in the environment wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "60000")
