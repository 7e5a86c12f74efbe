"""`python -m harness.offline_eval CHECKPOINT`: score a checkpoint in transformers (harness.score.offline)."""

import sys

from harness.errors import HarnessError
from harness.score.offline import main

if __name__ == "__main__":
    try:
        main()
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
