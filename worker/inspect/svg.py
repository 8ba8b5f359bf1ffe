"""An SVG picture of a room's DAG, written by hand (no graphviz): one box per stored event.

Prev events sit above the events that reference them (rows by longest path, see
`model.layout`), so forks spread sideways and merges pull branches back together. Box colour
says what was decided (accepted state, accepted message, soft-failed, rejected, outlier);
tags say fork, merge, forward extremity, in current state, redacted and state reset. Each
merge with conflicts gets a note to its right: the conflicted keys, the candidates of each
side and the one resolution kept. Every box carries a `<title>` (a tooltip in browsers) with
the full event ID and the reason of a refusal.

The output is deterministic for a given `RoomDump` (fixed sort orders, no timestamps).
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import escape, quoteattr

from worker.core.events import Event
from worker.inspect.model import EventInfo, Merge, RoomDump, forks, layout, merges

NODE_W, NODE_H = 220, 46
COL_GAP, ROW_GAP = 36, 30
MARGIN, HEADER = 24, 92
NOTE_LINE = 15

# outcome -> (fill, stroke, dash)
_STYLE = {
    "accepted": ("#e8f0fe", "#3b6fd4", ""),
    "soft_failed": ("#fff1db", "#d97a00", "6 3"),
    "rejected": ("#fde3e1", "#c5221f", ""),
    "invalid": ("#fde3e1", "#c5221f", "2 2"),
    "outlier": ("#eeeeee", "#8a8a8a", "2 3"),
}
_MESSAGE_FILL = "#ffffff"
_LEGEND = [
    ("accepted state", "#e8f0fe", "#3b6fd4", ""),
    ("accepted message", _MESSAGE_FILL, "#3b6fd4", ""),
    ("soft-failed", "#fff1db", "#d97a00", "6 3"),
    ("rejected", "#fde3e1", "#c5221f", ""),
    ("outlier", "#eeeeee", "#8a8a8a", "2 3"),
]


def short_id(event_id: str) -> str:
    """A readable prefix of an event ID ("$AbCdEfGh…"); readable IDs stay whole."""
    return event_id if len(event_id) <= 14 else event_id[:9] + "…"


def _user(user_id: str) -> str:
    return user_id.split(":", 1)[0] if user_id.startswith("@") else user_id


def label(ev: Event) -> str:
    """One line saying what the event does: "ban @carol", "power_levels", "message"."""
    short = ev.type[len("m.room."):] if ev.type.startswith("m.room.") else ev.type
    if ev.type == "m.room.member":
        who = _user(ev.state_key or "")
        return f"{ev.membership or '?'} {who}" if ev.state_key != ev.sender else \
            f"{ev.membership or '?'} {who} (self)"
    if ev.type == "m.room.redaction" and ev.redacts:
        return f"redaction of {short_id(ev.redacts)}"
    if ev.state_key:
        return f"{short} [{ev.state_key}]"
    return short


def _tags(info: EventInfo, kids: int, merge: Merge | None, tips: set[str],
          current: set[str]) -> list[tuple[str, str]]:
    tags: list[tuple[str, str]] = []
    if kids > 1:
        tags.append(("fork", "#6a1b9a"))
    if merge is not None:
        tags.append(("merge", "#00796b"))
    if merge is not None and merge.resets:
        tags.append(("⚠ state reset", "#c5221f"))
    if info.event_id in tips:
        tags.append(("extremity", "#2e7d32"))
    if info.event_id in current:
        tags.append(("current", "#3b6fd4"))
    if info.redacted_by:
        tags.append(("redacted", "#555555"))
    return tags


def _tooltip(info: EventInfo) -> str:
    ev = info.event
    lines = [ev.event_id, f"type {ev.type}"]
    if ev.state_key is not None:
        lines.append(f"state_key {ev.state_key!r}")
    lines += [f"sender {ev.sender}", f"depth {ev.depth}, kind {info.kind}",
              f"outcome {info.outcome}"]
    if info.reason_code:
        lines.append(f"{info.reason_code}: {info.reason}")
    if info.redacted_by:
        lines.append(f"redacted by {info.redacted_by}")
    return "\n".join(lines)


def describe(event_id: str | None, events: Mapping[str, Event]) -> str:
    """"ban @carol ($7kwoBnu9…)" for an event ID; "(none)" for an absent entry."""
    if not event_id:
        return "(none)"
    ev = events.get(event_id)
    return f"{label(ev)} ({short_id(event_id)})" if ev is not None else short_id(event_id)


def _note_lines(merge: Merge, events: Mapping[str, Event]) -> list[tuple[str, str]]:
    """(text, colour) lines of a merge's note."""
    lines = [(f"state resolution at {short_id(merge.event_id)}: "
              f"{len(merge.conflicts)} conflicted key(s)", "#00796b")]
    for c in merge.conflicts:
        key = c.key[0] + (f" {c.key[1]}" if c.key[1] else "")
        lines.append((f"{key}:", "#222222"))
        cands = " vs ".join(describe(v, events) for v in c.candidates)
        lines.append((f"    {cands}", "#555555"))
        won = f"kept {describe(c.winner, events)}" if c.winner else "removed from the state"
        lines.append((f"    → {won}", "#00796b"))
    for r in merge.resets:
        lines.append((f"⚠ state reset: {r.get('kind', '')} {r.get('user_id', '')} "
                      f"(lost {short_id(r.get('lost', ''))})", "#c5221f"))
    return lines


def render(dump: RoomDump) -> str:
    """The SVG document for `dump`."""
    pos = layout(dump)
    merged = merges(dump)
    tips = set(dump.extremities)
    current = set(dump.current_state.values())
    cols = 1 + max((c for _, c in pos.values()), default=0)
    rows = 1 + max((r for r, _ in pos.values()), default=0)
    graph_w = MARGIN + cols * (NODE_W + COL_GAP)

    def xy(eid: str) -> tuple[int, int]:
        r, c = pos[eid]
        return MARGIN + c * (NODE_W + COL_GAP), HEADER + r * (NODE_H + ROW_GAP)

    by_id = {i.event_id: i.event for i in dump.events}
    notes = [m for m in merged.values() if m.conflicts or m.resets]
    note_w = max(
        (_text_width(t) + 20 for m in notes for t, _ in _note_lines(m, by_id)), default=0
    )
    note_y: dict[str, int] = {}
    bottom = HEADER + rows * (NODE_H + ROW_GAP)
    cursor = HEADER
    for m in sorted(notes, key=lambda m: pos.get(m.event_id, (0, 0))):
        if m.event_id not in pos:
            continue
        y = max(cursor, xy(m.event_id)[1])
        note_y[m.event_id] = y
        cursor = y + (len(_note_lines(m, by_id)) + 1) * NOTE_LINE + 10
    width = graph_w + (note_w + MARGIN if note_y else 0)
    height = max(bottom, cursor) + MARGIN

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#fafafa"/>',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#777"/></marker></defs>',
        f'<text x="{MARGIN}" y="28" font-size="17" font-weight="bold">'
        f'{escape(dump.room_id)}</text>',
        f'<text x="{MARGIN}" y="48" font-size="12" fill="#444">room version '
        f'{escape(dump.version)} · {len(dump.events)} events · prev events above, '
        f'arrows point to the events that reference them</text>',
    ]
    lx = MARGIN
    for name, fill, stroke, dash in _LEGEND:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<rect x="{lx}" y="60" width="14" height="14" rx="3" fill="{fill}" '
                   f'stroke="{stroke}"{dash_attr}/>'
                   f'<text x="{lx + 19}" y="72" font-size="11">{name}</text>')
        lx += 30 + 7 * len(name)

    out.append('<g class="edges" fill="none" stroke="#888" stroke-width="1.3">')
    for info in dump.events:
        if info.event_id not in pos:
            continue
        x2, y2 = xy(info.event_id)
        for prev in info.event.prev_event_ids:
            if prev not in pos:
                continue
            x1, y1 = xy(prev)
            sx, sy, ex, ey = x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2, y2
            mid = (sy + ey) / 2
            colour = "#c9c9c9" if info.outcome != "accepted" else "#888"
            out.append(f'<path class="edge" d="M{sx:.0f},{sy:.0f} C{sx:.0f},{mid:.0f} '
                       f'{ex:.0f},{mid:.0f} {ex:.0f},{ey - 1:.0f}" stroke="{colour}" '
                       f'marker-end="url(#arrow)"/>')
    out.append("</g>")

    # Note connectors first, so that boxes drawn later sit on top of them.
    for eid, y in note_y.items():
        out.append(_connector(merged[eid], xy(eid), graph_w, y))
    forked = set(forks(dump))
    for info in dump.events:
        if info.event_id in pos:
            out.append(_node(info, *xy(info.event_id), 2 if info.event_id in forked else 1,
                             merged.get(info.event_id), tips, current))

    for eid, y in note_y.items():
        out.append(_note(merged[eid], _note_lines(merged[eid], by_id), graph_w, note_w, y))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _node(info: EventInfo, x: int, y: int, kids: int, merge: Merge | None, tips: set[str],
          current: set[str]) -> str:
    ev = info.event
    fill, stroke, dash = _STYLE.get(info.outcome, _STYLE["invalid"])
    if info.outcome == "accepted" and ev.state_key is None:
        fill = _MESSAGE_FILL
    width = "2.6" if info.event_id in tips else "1.4"
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    deco = ' text-decoration="line-through"' if info.redacted_by else ""
    sub = f"{short_id(ev.event_id)} · {_user(ev.sender)}"
    if info.outcome != "accepted":
        sub += f" · {info.reason_code or info.outcome}"
    if len(sub) > 36:  # 10px text in a 220px box; the tooltip has it all
        sub = sub[:35] + "…"
    parts = [
        f'<g class="event {info.outcome}" data-event-id={quoteattr(ev.event_id)}>',
        f"<title>{escape(_tooltip(info))}</title>",
        f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="7" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{width}"{dash_attr}/>',
        f'<text x="{x + 9}" y="{y + 19}" font-size="13"{deco}>{escape(label(ev))}</text>',
        f'<text x="{x + 9}" y="{y + 36}" font-size="10" fill="#555">{escape(sub)}</text>',
    ]
    tx = x + NODE_W
    for text, colour in reversed(_tags(info, kids, merge, tips, current)):
        w = 8 + 6 * len(text)
        tx -= w + 3
        parts.append(f'<rect x="{tx}" y="{y - 8}" width="{w}" height="14" rx="7" '
                     f'fill="{colour}"/><text x="{tx + w / 2:.0f}" y="{y + 2}" font-size="9" '
                     f'fill="#fff" text-anchor="middle">{escape(text)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _text_width(text: str) -> int:
    """Rough width of 11px sans-serif text (no font metrics without a renderer)."""
    return int(6.4 * len(text))


def _connector(merge: Merge, at: tuple[int, int], left: int, y: int) -> str:
    nx, ny = at
    border = "#c5221f" if merge.resets else "#00796b"
    return (f'<path class="connector" d="M{nx + NODE_W},{ny + NODE_H / 2:.0f} '
            f'L{left + 4},{y + 12}" stroke="{border}" stroke-dasharray="3 3" fill="none"/>')


def _note(merge: Merge, lines: list[tuple[str, str]], left: int, width: int, y: int) -> str:
    h = (len(lines) + 1) * NOTE_LINE
    x = left + 4
    border = "#c5221f" if merge.resets else "#00796b"
    parts = [
        f'<g class="note" data-event-id={quoteattr(merge.event_id)}>',
        f'<rect x="{x}" y="{y}" width="{width}" height="{h}" rx="5" fill="#ffffff" '
        f'stroke="{border}"/>',
    ]
    for n, (text, colour) in enumerate(lines):
        weight = ' font-weight="bold"' if n == 0 else ""
        parts.append(f'<text x="{x + 8}" y="{y + 16 + n * NOTE_LINE}" font-size="11" '
                     f'fill="{colour}" xml:space="preserve"{weight}>{escape(text)}</text>')
    parts.append("</g>")
    return "".join(parts)


def event_count(svg_text: str) -> int:
    """How many event boxes an SVG from `render` holds (for checks and tests)."""
    return svg_text.count('<g class="event ')


__all__ = ["describe", "event_count", "label", "render", "short_id"]
