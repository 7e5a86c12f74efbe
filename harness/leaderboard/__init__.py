"""`python -m harness.leaderboard`: the ranked comparison of the runs in results/."""
