"""`python -m lorair_desktop.worker …`: the worker without going through the `lorair` command."""

import sys

from .main import main

sys.exit(main())
