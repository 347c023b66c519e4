"""``python -m moltbot_gw.cli``: the console script."""
import sys

from . import main

sys.exit(main())
