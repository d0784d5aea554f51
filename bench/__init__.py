"""The provisioner benchmark suite (`make bench`, or `python -m bench`): the Temporal workflow against the same
activities called directly in one process (the "option B" baseline), on the embedded stack with real PostgreSQL."""
