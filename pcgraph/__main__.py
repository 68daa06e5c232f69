import sys

from pcgraph.cli import main

sys.exit(main())
