"""`python -m sift ...` is the `sift` command."""

import sys

from sift.cli import main

sys.exit(main())
