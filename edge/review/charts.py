"""The bundle's programme plots as inline SVG (no library, no script, no outside file): referral rate per
period against its expected band, and the score distribution of the baseline against the latest period."""

from __future__ import annotations

import html

W, H = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 14, 40


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _frame(title: str, body: str, y_label: str) -> str:
    ticks = "".join(
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{_y(v):.1f}" y2="{_y(v):.1f}" stroke="#e5e7eb"/>'
        f'<text x="{LEFT - 6}" y="{_y(v) + 4:.1f}" text-anchor="end">{v:g}</text>' for v in (0, 0.25, 0.5, 0.75, 1.0))
    return (f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">'
            f'<title>{_e(title)}</title>{ticks}'
            f'<text x="12" y="{TOP + (H - TOP - BOTTOM) / 2:.0f}" transform="rotate(-90 12 {TOP + (H - TOP - BOTTOM) / 2:.0f})"'
            f' text-anchor="middle">{_e(y_label)}</text>{body}</svg>')


def _y(value: float) -> float:
    return TOP + (1.0 - value) * (H - TOP - BOTTOM)


def _x(index: int, count: int) -> float:
    step = (W - LEFT - RIGHT) / max(count, 1)
    return LEFT + step * (index + 0.5)


def _labels(names: list[str]) -> str:
    every = max(1, len(names) // 8)
    return "".join(f'<text x="{_x(i, len(names)):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{_e(n)}</text>'
                   for i, n in enumerate(names) if i % every == 0 or i == len(names) - 1)


def referral_chart(periods: list[dict]) -> str:
    """Observed referral rate per period (dots; red when outside its band) over the expected band (grey)."""
    periods = [p for p in periods if p["screened"]]
    if not periods:
        return '<p class="meta">No screened exam: no referral-rate plot.</p>'
    n = len(periods)
    width = max(4.0, (W - LEFT - RIGHT) / n * 0.6)
    body, points = [], []
    for i, p in enumerate(periods):
        x = _x(i, n)
        if p["band"]:
            lo, hi = p["band"]
            body.append(f'<rect class="band" x="{x - width / 2:.1f}" y="{_y(hi):.1f}" width="{width:.1f}" '
                        f'height="{max(1.0, _y(lo) - _y(hi)):.1f}" fill="#d0d7de"><title>expected band '
                        f'{lo:.3f}-{hi:.3f}</title></rect>')
        points.append(f"{x:.1f},{_y(p['referral_rate']):.1f}")
    body.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#57606a"/>')
    for i, p in enumerate(periods):
        colour = "#cf222e" if p["referral_alert"] else "#0969da"
        body.append(f'<circle class="rate{" alert" if p["referral_alert"] else ""}" cx="{_x(i, n):.1f}" '
                    f'cy="{_y(p["referral_rate"]):.1f}" r="4" fill="{colour}"><title>{_e(p["period"])}: '
                    f'{p["referred"]} of {p["screened"]} referred ({p["referral_rate"]:.3f})</title></circle>')
    body.append(_labels([p["period"] for p in periods]))
    return _frame("Referral rate per period against the expected band", "".join(body), "referral rate")


def score_chart(baseline: list[int] | None, latest: list[int], baseline_name: str | None, latest_name: str) -> str:
    """Share of exams per abnormality-score bin (0-0.1 ... 0.9-1): baseline (grey) and latest (blue)."""
    if not sum(latest):
        return '<p class="meta">No score to plot.</p>'
    series = [(latest, "#0969da", latest_name)]
    if baseline and sum(baseline):
        series.insert(0, (baseline, "#8c959f", baseline_name))
    bins = len(latest)
    slot = (W - LEFT - RIGHT) / bins
    bar = slot * 0.8 / len(series)
    body = []
    for s, (counts, colour, name) in enumerate(series):
        total = sum(counts)
        for i, c in enumerate(counts):
            share = c / total
            x = LEFT + i * slot + slot * 0.1 + s * bar
            body.append(f'<rect class="bin" x="{x:.1f}" y="{_y(share):.1f}" width="{bar:.1f}" '
                        f'height="{_y(0) - _y(share):.1f}" fill="{colour}"><title>{_e(name)}: {c} exams with '
                        f'score {i / bins:.1f}-{(i + 1) / bins:.1f}</title></rect>')
    body.append("".join(f'<text x="{LEFT + i * slot:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{i / bins:.1f}</text>'
                        for i in range(0, bins + 1, 2)))
    legend = "".join(f'<rect x="{LEFT + 10 + 180 * s}" y="{H - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{LEFT + 24 + 180 * s}" y="{H - 5}">{_e(name)}</text>'
                     for s, (_, colour, name) in enumerate(series))
    return _frame("Distribution of abnormality scores", "".join(body) + legend, "share of exams")
