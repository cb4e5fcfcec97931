"""The packaged model registry (data only): entries/*.json and checkpoints/."""
