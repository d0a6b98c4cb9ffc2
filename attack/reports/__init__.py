"""The report writers: results.json, matrix.csv, report.md, heatmaps, suite.md and the study report."""
