"""`python -m parcae ...` (also what `torchrun -m parcae train ...` runs)."""

import sys

from parcae.cli import main

sys.exit(main())
