"""Flow models built from ``flows.bijectors``."""
