"""Pictures: ranked results, training curves."""
