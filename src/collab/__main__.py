"""``python -m collab``: the same as the ``collab`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
