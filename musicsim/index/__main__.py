"""``python -m musicsim.index``: see ``musicsim.index.cli``."""
from musicsim.index.cli import run

if __name__ == "__main__":
    run()
