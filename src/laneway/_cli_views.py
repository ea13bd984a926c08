"""How the ``laneway`` command shows what the gateway answered: rich tables and
lines sized for an 80-column terminal."""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

__all__ = ["age", "ago", "event_line", "job_view", "jobs_table", "lanes_view", "report_view"]


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds / 3600:.1f}h"


def ago(at: float, now: float | None = None) -> str:
    """``12s ago`` for a wall-clock time."""
    return age(max(0.0, (now if now is not None else time.time()) - at)) + " ago"


def _lanes_table(snap: dict[str, Any]) -> Table:
    table = Table(title="lanes", title_justify="left")
    table.add_column("lane", overflow="ellipsis", max_width=32)
    for col in ("active", "waiting", "behind session", "oldest active", "oldest wait"):
        table.add_column(col, justify="right", no_wrap=True)
    for lane in snap["lanes"]:
        shared = not lane["name"].startswith("session:")
        table.add_row(
            lane["name"],
            f"{lane['active']}/{lane['limit']}",
            str(lane["queued"]),
            str(lane.get("behind_session", 0)) if shared else "",
            age(lane["oldest_active_s"]),
            age(lane["oldest_queued_s"]),
        )
    return table


def lanes_view(snap: dict[str, Any], note: str | None = None) -> Group:
    """The snapshot: shared lanes (waiting for a slot vs behind their own session),
    busy session lanes, totals, zombies; ``note`` says the view is stale and why."""
    summary = (
        f"jobs queued {snap['jobs_queued']}  running {snap['jobs_running']}  "
        f"zombies {len(snap['zombies'])}  loop lag {snap['loop_lag'] * 1000:.0f} ms  "
        f"loop blocks {snap['loop_blocks']}"
    )
    parts: list[Any] = [_lanes_table(snap), summary]
    if snap["zombies"]:
        zt = Table(title="zombies (abandoned, slots freed)", title_justify="left")
        for col in ("job", "session", "kind", "age"):
            zt.add_column(col)
        for z in snap["zombies"]:
            zt.add_row(z["job_id"], z["session"], z["kind"], age(z["age_s"]))
        parts.append(zt)
    if note:
        parts.append(Text(note, style="yellow"))
    return Group(*parts)


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    """Newest first. Ids, states and times keep their width; the session and the
    reason/error column give way, cut with an ellipsis and never wrapped."""
    now = time.time()
    rows = [_job_row(job, now) for job in jobs]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i, name in enumerate(("id", "session", "state", "try", "when", "reason / error")):
        widest = max((len(r[i]) for r in rows), default=0)
        if name == "session":
            table.add_column(name, overflow="ellipsis", no_wrap=True, max_width=20)
        elif name == "reason / error":
            table.add_column(name, overflow="ellipsis", no_wrap=True, min_width=10)
        else:
            justify: Any = "right" if name in ("try", "when") else "left"
            table.add_column(name, no_wrap=True, min_width=max(widest, len(name)), justify=justify)
    for row in rows:
        table.add_row(*row)
    return table


def _job_row(job: dict[str, Any], now: float) -> tuple[str, ...]:
    why = job["reason"] or ""
    error = (job["error"] or "").splitlines()[0] if job["error"] else ""
    if error and error != why:
        why = f"{why}: {error}" if why else error
    when = ago(job["updated_at"], now)
    return (job["id"], job["session"], job["state"], str(job["attempts"]), when, why)


def job_view(job: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    now = time.time()
    for key in ("id", "session", "handler", "state", "attempts", "reason", "error"):
        table.add_row(key, str(job.get(key) if job.get(key) is not None else "-"))
    table.add_row("created", ago(job["created_at"], now))
    table.add_row("updated", ago(job["updated_at"], now))
    table.add_row("payload", str(job.get("payload")))
    if job.get("result") is not None:
        table.add_row("result", str(job["result"]))
    return table


def event_line(event: dict[str, Any]) -> str:
    """One event as one line: ``seq kind job text-or-data``."""
    data = event.get("data")
    shown = ""
    if isinstance(data, dict):
        if "text" in data:
            shown = str(data["text"])
        elif data:
            shown = " ".join(f"{k}={v}" for k, v in data.items() if k != "payload")
    elif data is not None:
        shown = str(data)
    job = event.get("job_id") or "-"
    return f"{event['seq']:>6} {event['kind']:<14} {job}  {shown}".rstrip()


def report_view(report: Any) -> Table:
    table = Table(title="laneway demo", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in report.rows():
        table.add_row(label, value)
    return table
