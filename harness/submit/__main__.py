"""`python -m harness.submit +variant=NAME`: see harness.submit.prepare."""

import sys

from harness.submit.prepare import main

sys.exit(main())
