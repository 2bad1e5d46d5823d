"""``python -m ferrum``."""

import sys

from ferrum.cli import main

sys.exit(main())
