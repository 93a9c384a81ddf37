"""`python -m lmforge.cli` is the `lmforge` command."""

from lmforge.cli import main

main()
