"""Study: the notebook series as a whole (notebook helpers, findings, figures, the runner and its summary)."""
