"""``python -m certrisk.cli``."""

from certrisk.cli import main

main()
