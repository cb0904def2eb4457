"""Report: run outputs, tables, figures, provenance and the published numbers."""
