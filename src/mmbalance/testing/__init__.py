"""Writers of tiny fixture datasets in the real on-disk layouts, for tests and examples."""
