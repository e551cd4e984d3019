"""leanformer.patch."""
