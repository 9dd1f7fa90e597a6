"""Training: walk-forward folds, the torch sequence models and their shared loop, the model lifecycle, report plots.

Only this package (and the bench) imports torch and matplotlib; serving loads what it writes through
`models.registry` without either.
"""
