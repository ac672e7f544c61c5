"""The study report: a study folder (``runs/<study>``) -> one self-contained HTML file.

``load`` reads the study's files, ``analysis`` computes the noise floor and Pareto front, ``figures`` builds
the plotly figures, ``page`` writes escaped HTML, ``build`` puts them together. plotly and optuna are
imported only while a report is built.
"""

from autotune.report.build import report_command, write_report

__all__ = ["report_command", "write_report"]
