"""The build step: the variant's checkpoint, from the cache or made by `compress`, and its header checks."""
