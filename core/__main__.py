"""``python -m loraserve``: the same command line as the ``loraserve`` script."""

from loraserve.entrypoints.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
