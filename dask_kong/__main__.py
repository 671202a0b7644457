"""`python -m dask_kong ...`: the command line of `cli.py`."""

from .cli import main

raise SystemExit(main())
