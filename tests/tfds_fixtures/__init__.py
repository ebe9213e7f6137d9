"""TFDS builders the tests define, for `tfds.testing.mock_data` (a package: TFDS looks for a
builder's metadata in its package's folder)."""
