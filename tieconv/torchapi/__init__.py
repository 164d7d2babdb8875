"""The pipeline API on torch modules and state dicts: load hooks, loading, deduplicating save, memory."""
