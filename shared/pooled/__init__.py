"""The pooled baseline: per architecture, one model trained centrally on every site's data."""
