"""leanformer.train."""
