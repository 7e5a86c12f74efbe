"""`python -m harness.leaderboard`: see harness.leaderboard.report."""

import sys

from harness.leaderboard.report import main

sys.exit(main())
