"""`python -m harness.submit +variant=NAME`: a validated competition upload folder."""
