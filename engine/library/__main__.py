"""``python -m engine.library``: the command line of :mod:`engine.library.command`."""
import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
