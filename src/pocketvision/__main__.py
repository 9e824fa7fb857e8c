"""``python -m pocketvision``: the CLI (torchrun starts each training process this way)."""

import sys

from .cli import main

sys.exit(main())
