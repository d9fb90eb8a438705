"""Reading the numbers: metrics with report-level bootstrap intervals, the
image-independent reference scorers, findings with their controls, embedding
geometry and label co-occurrence."""
