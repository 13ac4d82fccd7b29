"""`python -m dpfreeze.cli`: the `dpfreeze` command."""

import sys

from dpfreeze.cli.main import main

sys.exit(main())
