"""``python -m prompt_processing.cli``: the same as ``pp``."""

import sys

from prompt_processing.cli import main

sys.exit(main())
