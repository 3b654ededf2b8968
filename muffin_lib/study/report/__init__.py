"""What the notebooks say: one tested function per finding sentence or results block.

Notebooks call these instead of assembling f-strings and dictionaries in cells; every sentence is
computed from the numbers it states.
"""

from __future__ import annotations

from muffin_lib.study.report.data import (  # noqa: F401
    augment_finding,
    cache_table,
    color_finding,
    color_statistics,
    data_finding,
    environment_note,
    environment_summary,
    exploration_results,
    preprocessing_results,
    resize_finding,
    setup_results,
    size_frame,
    split_table,
    twin_pairs_to_show,
    twins_finding,
)
from muffin_lib.study.report.models import (  # noqa: F401
    confusion_finding,
    confusion_table,
    curve_finding,
    initialisation_note,
    initialisation_text,
    model_results,
    most_confident_errors,
    per_class_frame,
    training_note,
    validation_comparison,
    validation_finding,
    validation_summary,
)
from muffin_lib.study.report.selection import (  # noqa: F401
    best_by_cv,
    calibration_finding,
    comparison_finding,
    cv_finding,
    cv_results,
    cv_table,
    final_results,
    final_test_findings,
    grid_findings,
    grid_plan,
    grid_results,
    grid_table,
    most_confident_test_errors,
    nested_finding,
)
from muffin_lib.study.report.text import (  # noqa: F401
    format_ci,
)
