"""Operations: the command line, demo, replay, retraining, state administration and probes."""
