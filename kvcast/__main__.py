import sys

from kvcast.cli import main

sys.exit(main())
