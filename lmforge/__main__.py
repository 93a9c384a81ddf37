"""`python -m lmforge`: the `lmforge` command line (also what `torchrun -m lmforge` runs)."""

from lmforge.cli import main

main()
