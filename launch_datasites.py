"""Start the local datasites (data owner side); same as ``fl-syft launch``. See --help."""

import sys

from fl_syft.cli import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
