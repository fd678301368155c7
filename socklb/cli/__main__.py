"""python -m socklb.cli: the socklb console script."""
import sys

from socklb.cli import main

sys.exit(main())
