"""``python -m pocketvision``: the CLI (torchrun starts each training process this way)."""

import sys

from .cli.commands import main

sys.exit(main())
