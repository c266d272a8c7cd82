"""`ifc report`: a run's event log, read for reviewers.

Layers, each its own module: `load` reads a run directory read-only into plain dataclasses (and raises
`ReportError` with a one-line reason when it cannot), `summary` computes counts, the most denied targets
and the taint timeline, and the renderers turn that into Markdown, one self-contained HTML page (with
`svg` drawing each provenance path) or JSON.
"""

from ifc.report.html import render_html
from ifc.report.jsonout import render_json, report_dict
from ifc.report.load import Denial, Hop, ReportError, Run, load_run
from ifc.report.markdown import render_markdown
from ifc.report.summary import Summary, summarize
from ifc.report.svg import path_svg

RENDERERS = {"md": render_markdown, "html": render_html, "json": render_json}

__all__ = ["RENDERERS", "Denial", "Hop", "ReportError", "Run", "Summary", "load_run", "path_svg", "render_html",
           "render_json", "render_markdown", "report_dict", "summarize"]
