"""``python -m laneway``: the command-line interface."""

from ._launch import main

if __name__ == "__main__":
    main()
