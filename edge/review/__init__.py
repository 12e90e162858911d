"""The review family: what a remote doctor reads from the review log and writes back.

`edge.review` was one module (now `edge/review/listing.py`); its names stay importable from here.
New review modules live in this package: images (film + heatmap), verdicts, stats, the bundle's
charts. The older review_*.py modules beside it move in here later.
"""

from .listing import exam_record, parse_since, print_exam_table, select_exams

__all__ = ["exam_record", "parse_since", "print_exam_table", "select_exams"]
