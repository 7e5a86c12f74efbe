"""The replay step: the load generator, its watchdog, token accounting, and the workloads."""
