"""Models: the catalog, the local model store (pull, resolve), and our decoder slices (modeling)."""
