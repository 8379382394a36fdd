"""OptunaHub sampler packages (one folder each)."""
