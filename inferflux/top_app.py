"""The live UI of `inferflux-top` (textual): supervision tree, scheduler, KV cache,
models."""

from __future__ import annotations

import asyncio
import time

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Input, Sparkline, Static

from .top_data import (
    COLUMNS,
    FETCH_ERRORS,
    Rates,
    Sample,
    actor_rows,
    fetch,
    kv_summary,
    model_lines,
    scheduler_summary,
)

SORTABLE = ("tree order", "mailbox", "msgs/s", "restarts", "state")


class TopApp(App[None]):
    TITLE = "inferflux-top"
    CSS = """
    #actors { height: 1fr; }
    .panel { height: auto; padding: 0 1; border: round $accent; }
    #tok { height: 3; }
    #filter { display: none; }
    #filter.shown { display: block; }
    """
    # priority: the table would otherwise take the keys; check_action lets them through
    # to the filter box while it is being typed in.
    BINDINGS = [
        Binding("s", "sort", "sort", priority=True),
        Binding("f", "filter", "filter", priority=True),
        Binding("p", "pause", "pause", priority=True),
        Binding("q", "quit", "quit", priority=True),
    ]

    def __init__(self, url: str, interval: float = 1.0) -> None:
        super().__init__()
        self.url = url
        self.interval = interval
        self.paused = False
        self.sort_index = 0
        self.name_filter = ""
        self.rates = Rates()
        self.sample: Sample | None = None
        self.msg_rates: dict[str, float] = {}
        self.error = ""
        self._last_poll = 0.0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter actors by name (enter to apply)", id="filter")
        yield DataTable(id="actors", zebra_stripes=True, cursor_type="row")
        with Vertical(classes="panel"):
            yield Static(id="scheduler")
            yield Sparkline([0.0], id="tok")
        yield Static(id="kv", classes="panel")
        yield Static(id="models", classes="panel")
        yield Static(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        table.focus()
        await self.poll()
        self.set_interval(self.interval, self.poll)

    async def poll(self) -> None:
        if self.paused:
            return
        now = time.monotonic()
        try:
            sample = await asyncio.to_thread(fetch, self.url)  # off the UI's event loop
        except FETCH_ERRORS as exc:
            self.error = f"cannot read {self.url}: {exc}"
            self.refresh_view()
            return
        self.error = ""
        dt = now - self._last_poll if self._last_poll else 0.0
        self._last_poll = now
        self.msg_rates, tok_s, ttft = self.rates.update(sample, dt)
        self.sample = sample
        self.query_one("#scheduler", Static).update(
            "[b]scheduler[/b]  " + scheduler_summary(sample, tok_s, ttft)
        )
        self.query_one("#tok", Sparkline).data = list(self.rates.tok_s_history) or [0.0]
        self.query_one("#kv", Static).update("[b]kv cache[/b]  " + kv_summary(sample))
        self.query_one("#models", Static).update(
            "[b]models[/b]  " + ("\n        ".join(model_lines(sample)) or "none loaded")
        )
        self.refresh_view()

    def refresh_view(self) -> None:
        status = self.query_one("#status", Static)
        status.update(
            " | ".join(
                part
                for part in (
                    f"sort: {SORTABLE[self.sort_index]}",
                    f"filter: {self.name_filter!r}" if self.name_filter else "",
                    "PAUSED" if self.paused else f"every {self.interval:g}s from {self.url}",
                    self.error,
                )
                if part
            )
        )
        if self.sample is None:
            return
        rows = actor_rows(self.sample.tree, self.msg_rates)
        if self.name_filter:
            rows = [r for r in rows if self.name_filter in r[0]]
        key = SORTABLE[self.sort_index]
        if key != "tree order":
            column = COLUMNS.index(key)
            numeric = key != "state"
            rows.sort(
                key=lambda r: float(r[column] or 0) if numeric else r[column],
                reverse=numeric,
            )
        table = self.query_one(DataTable)
        table.clear()
        table.add_rows(rows)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not isinstance(self.focused, Input)

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTABLE)
        self.refresh_view()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.refresh_view()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.name_filter = event.value.strip()
        event.input.remove_class("shown")
        self.query_one(DataTable).focus()
        self.refresh_view()
