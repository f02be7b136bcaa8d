"""``python -m mud_iknn``: the ``mud-iknn`` command line."""
from .cli import main

raise SystemExit(main())
