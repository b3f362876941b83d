"""`python -m sift ...` is the `sift` command."""

import sys

from sift.apps.cli import main

sys.exit(main())
