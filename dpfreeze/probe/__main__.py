"""`python -m dpfreeze.probe CONFIG_JSON`: run one probe agent (the orchestrator starts these)."""

import sys

from dpfreeze.probe.agent import main

sys.exit(main(sys.argv[1:]))
