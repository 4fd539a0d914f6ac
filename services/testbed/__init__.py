"""A test bed for the product's own checks, outside ``tests/`` so that ``infra/`` scripts may use it too.

``local_ring``: every ring core in one process, wired by seeded FIFO queues; ``tiny_models``: random-weight
checkpoints with a byte-level tokenizer; ``netns``: a LAN of SSH boards in network namespaces. No service
imports this package (an import-linter contract says so); the tests and ``infra/`` do.
"""
