"""`python -m perftramp ...`: the command line (see perftramp.cli)."""

import sys

from perftramp.cli import main

if __name__ == "__main__":
    sys.exit(main())
