"""Load generation (ghz-compatible), engine ceiling measurement, reports."""
