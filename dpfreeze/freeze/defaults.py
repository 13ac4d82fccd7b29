"""Where the service keeps its state and listens, and how long a lease may last: what its commands parse
their options with, importing nothing (`dpfreeze upgrade` must start fast; see cli/upgrade.py)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = Path(os.environ.get("DPFREEZE_STATE_DIR") or "/var/lib/dpfreeze")
DEFAULT_SOCKET = Path(os.environ.get("DPFREEZE_SOCKET") or "/run/dpfreeze/control.sock")
DEFAULT_TTL = 300.0
MAX_TTL = 24 * 3600.0
