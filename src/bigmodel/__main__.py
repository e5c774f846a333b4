"""`python -m bigmodel ...` (and `torchrun -m bigmodel train ...`) runs the CLI."""

from bigmodel.cli import main

main()
