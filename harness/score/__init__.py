"""The score step: metrics, quality, the gate against the baseline, offline evaluation, lm-eval."""
