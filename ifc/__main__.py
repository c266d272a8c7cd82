import sys

from ifc.cli import main

sys.exit(main())
