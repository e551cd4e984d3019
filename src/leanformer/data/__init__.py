"""leanformer.data."""
