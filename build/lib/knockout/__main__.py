"""`python -m knockout` is the CLI; the rules call it this way so no install of the repo is needed."""

from .cli import main

main()
