"""`python -m modelrun` is the `modelrun` command."""

from modelrun.cli import main

main()
