"""`python -m peftstd` is the `peftstd` command."""

import sys

from peftstd.cli import main

sys.exit(main())
