"""leanformer.profile."""
