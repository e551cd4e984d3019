"""leanformer.optim."""
