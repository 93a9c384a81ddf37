"""Scaling laws: records, fits (Chinchilla approaches 1-3 with bootstrap intervals), µP,
planning, real sweeps, plots and the training-experiment service (`lmforge.scaling.service`)."""
