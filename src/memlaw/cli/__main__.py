"""`python -m memlaw.cli ...`: the same as the `memlaw` command."""

from memlaw.cli import main

main()
