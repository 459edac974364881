"""``python -m reidbook``: the command line (:mod:`reidbook.cli`), also what ``torchrun -m reidbook`` runs."""

import sys

from .cli import main

sys.exit(main())
