"""`python -m service` is the `emoserve` command."""

from service.cli import main

main()
