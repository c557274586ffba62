"""`python -m trainwatch report LOGDIR [--json]`."""

import sys

from trainwatch.cli import main

sys.exit(main())
