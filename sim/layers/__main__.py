"""``python -m sim.layers``: see :mod:`sim.layers`."""
from .run import main

if __name__ == "__main__":
    raise SystemExit(main())
