"""lm-eval as a quality engine on the harness's own server."""
