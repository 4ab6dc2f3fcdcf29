"""`python -m emoserve_cli` is the `emoserve` command."""

from emoserve_cli import main

main()
