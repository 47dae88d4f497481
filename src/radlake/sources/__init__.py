"""Source adapters: one module per dataset layout, all ingesting through one pipeline."""
