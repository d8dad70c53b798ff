"""`python -m llamacpy` == the `llamacpy` console script."""

import sys

from .cli import main

sys.exit(main())
