"""Pictures: ranked results, training curves, the ACFL paper's figures (figures.py)."""
