"""``python -m robust_ft``: the same as the ``robust-ft`` console script."""

from robust_ft.cli import main

if __name__ == "__main__":
    main()
