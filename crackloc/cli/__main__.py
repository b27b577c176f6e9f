"""`python -m crackloc.cli` runs the command line."""

import sys

from crackloc.cli.main import main

sys.exit(main())
