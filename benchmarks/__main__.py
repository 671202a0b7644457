"""`python -m benchmarks`: see benchmarks/README.md, or run with --help."""

import sys

from .runner import main

# The guard matters: worker processes started with "spawn" import this module again.
if __name__ == "__main__":
    sys.exit(main())
