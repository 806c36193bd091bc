"""`python -m photobg` is the `photobg` command."""

import sys

from .cli import main

sys.exit(main())
