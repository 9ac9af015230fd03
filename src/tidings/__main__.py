import sys

from tidings.cli.main import main

sys.exit(main())
