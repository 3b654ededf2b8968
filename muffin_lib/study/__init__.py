"""Study: the notebook series as a whole.

``notebook`` (parameters, profiles and display helpers the notebooks call), ``report`` (findings,
tables and results of each notebook), ``plots`` (every figure) and ``runner`` (``python -m muffin_lib
run``: executes the series with papermill and writes the summary). The top of the import graph.
"""
