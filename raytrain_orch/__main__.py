import sys

from raytrain_orch.cli.main import main

sys.exit(main())
