"""`python -m dmtoolkit …` does what the `dmtoolkit` command does (see dmtoolkit/cli.py)."""

from dmtoolkit.cli import main

if __name__ == "__main__":
    main()
