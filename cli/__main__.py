"""`python -m cli`: the `ocrmesh` console script."""

import sys

from cli.main import main

sys.exit(main())
