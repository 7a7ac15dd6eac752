"""``python -m musicsim.index``: see ``musicsim.index.cli``."""
from musicsim.index.cli import cli

if __name__ == "__main__":
    cli()
