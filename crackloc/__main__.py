"""`python -m crackloc` runs the command line."""

import sys

from crackloc.cli import main

sys.exit(main())
