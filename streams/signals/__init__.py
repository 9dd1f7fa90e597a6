"""Decide: the signal stage (features, the ensemble, risk) and the model it serves."""
