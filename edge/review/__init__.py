"""The review family: what a remote doctor reads from the review log and writes back.

`edge.review` was one module (now `edge/review/listing.py`); its names stay importable from here.
The package holds the whole family: log (the SQLite review log), screen_log (writing screening
results into it), listing, images (film + heatmap), export (the offline bundle), page, charts,
verdicts and stats.
"""

from .listing import exam_record, parse_since, print_exam_table, select_exams

__all__ = ["exam_record", "parse_since", "print_exam_table", "select_exams"]
