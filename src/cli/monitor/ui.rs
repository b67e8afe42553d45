//! Drawing the monitor from an [`App`]: no state of its own beyond the list's
//! scroll offset, which ratatui keeps in a `TableState`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState};

use super::app::{App, Conn, Detail, wrap};
use super::records::{LineKind, Summary, clean, fit};

/// The help line, always on screen.
const HELP: &str = " ↑/↓ j/k select   PgUp/PgDn scroll detail   r replay   ? more help   q/Esc quit";
/// The help line while the expanded help is open.
const HELP_OPEN: &str = " ?/Esc close this help   q quit";
/// The expanded help (`?`).
const HELP_LONG: [&str; 9] = [
    "Up/Down, k/j    select a newer/older request",
    "Home/End        newest/oldest request",
    "PgUp/PgDn       scroll the selected request's detail",
    "r               replay the selected request through the tunnel",
    "                (the new record appears at the top when it is done)",
    "q, Esc, Ctrl-C  quit (the tunnel goes offline)",
    "?, Esc          close this help",
    "Full bodies: hookway tunnels request <tunnel> <request>",
    "  (--body-only request|response > FILE: one body's exact bytes)",
];

/// The areas of the screen: header, list, detail, status line, help line.
fn areas(area: Rect) -> [Rect; 5] {
    let [header, body, status, help] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(3), Constraint::Length(1), Constraint::Length(1)])
            .areas(area);
    let [list, detail] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(body);
    [header, list, detail, status, help]
}

/// Columns and rows inside the detail pane's border, for scrolling.
pub fn detail_size(screen: Rect) -> (u16, u16) {
    let detail = areas(screen)[2];
    (detail.width.saturating_sub(2), detail.height.saturating_sub(2))
}

/// Draws everything.
pub fn draw(f: &mut Frame, app: &App, list: &mut TableState) {
    let [header, list_area, detail, status, help] = areas(f.area());
    f.render_widget(Paragraph::new(header_lines(app, usize::from(header.width))), header);
    draw_list(f, app, list, list_area);
    draw_detail(f, app, detail);
    f.render_widget(Paragraph::new(format!(" {}", clean(&app.status))), status);
    let hint = if app.help { HELP_OPEN } else { HELP };
    f.render_widget(Paragraph::new(hint).style(Style::new().add_modifier(Modifier::REVERSED)), help);
    if app.help {
        draw_help(f, list_area.union(detail));
    }
}

/// The header, `width` columns wide: the connection state first, so a narrow
/// terminal keeps it (at 80 columns it was cut to "con" after the URL), then
/// the URL, cut with an ellipsis rather than mid-port, then the tunnel id.
fn header_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let (state, colour) = match &app.conn {
        Conn::Connecting => ("connecting…".to_owned(), Color::Yellow),
        Conn::Connected => ("connected".to_owned(), Color::Green),
        Conn::Reconnecting { reason, retry_in } => {
            (format!("reconnecting in {:.1}s ({reason})", retry_in.as_secs_f64()), Color::Yellow)
        }
        Conn::Ended { reason } => (format!("ended: {reason} (q to quit)"), Color::Red),
    };
    let bold = Style::new().add_modifier(Modifier::BOLD);
    const TITLE: &str = " hookway monitor  ";
    let mut room = width.saturating_sub(TITLE.len());
    // The state keeps at least its start; a long reason leaves room for the URL.
    let state = fit(&clean(&state), room.min(24.max(room / 2)));
    room = room.saturating_sub(state.chars().count() + 2);
    let url = app.url.as_deref().map(clean).unwrap_or_default();
    let url = if url.chars().count() <= room { url } else { fit(&url, room) };
    room = room.saturating_sub(url.chars().count() + 2);
    let id = if app.tunnel_id.len() <= room { app.tunnel_id.clone() } else { String::new() };
    let first = Line::from(vec![
        Span::styled(TITLE, bold),
        Span::styled(state, Style::new().fg(colour)),
        Span::raw("  "),
        Span::styled(url, Style::new().fg(Color::Cyan)),
        Span::raw("  "),
        Span::raw(id),
    ]);
    let stream = match &app.stream_error {
        None => Span::raw("live"),
        Some(err) => Span::styled(clean(err), Style::new().fg(Color::Red)),
    };
    let mut second = vec![Span::raw(format!(" requests: {}   stream: ", app.records.len())), stream];
    if let Some(log) = &app.log {
        second.push(Span::styled(format!("   log: {}", clean(log)), Style::new().fg(Color::DarkGray)));
    }
    vec![first, Line::from(second)]
}

/// Colour of a status class: success green, redirects cyan, caller errors
/// yellow, server and edge errors red, no status at all magenta.
fn status_colour(status: Option<u16>) -> Color {
    match status {
        Some(200..=299) => Color::Green,
        Some(300..=399) => Color::Cyan,
        Some(400..=499) => Color::Yellow,
        Some(_) => Color::Red,
        None => Color::Magenta,
    }
}

/// Below this width (inside the border) the list shows seconds, not milliseconds,
/// so that the path keeps some room.
const MILLIS_FROM_WIDTH: u16 = 90;

fn draw_list(f: &mut Frame, app: &App, state: &mut TableState, area: Rect) {
    let time_width = if area.width.saturating_sub(2) >= MILLIS_FROM_WIDTH { 12 } else { 8 };
    let outcome_width = app.records.iter().map(|r| r.outcome_text().chars().count()).max().unwrap_or(0).clamp(7, 26);
    // Inside the borders, after the highlight symbol.
    let columns = columns(usize::from(area.width).saturating_sub(2 + 2), time_width, outcome_width);
    let rows = app.records.iter().map(|r: &Summary| {
        Row::new(columns.iter().map(|&(column, width)| cell(r, column, width)))
            .style(Style::new().fg(status_colour(r.status)))
    });
    let widths = columns.iter().map(|&(column, width)| match column {
        Column::Path => Constraint::Fill(1),
        _ => Constraint::Length(width as u16),
    });
    let header =
        Row::new(columns.iter().map(|&(column, _)| column.title())).style(Style::new().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::new().borders(Borders::ALL).title(" Requests (newest first) "))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    state.select(app.selected_index());
    // Rows inside the border, below the header.
    let height = usize::from(area.height.saturating_sub(3));
    *state.offset_mut() = list_offset(state.offset(), app.records.len(), height);
    f.render_stateful_widget(table, area, state);
}

/// A column of the list; declared in the order they appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Time,
    Method,
    Path,
    Status,
    Duration,
    Outcome,
}

impl Column {
    fn title(self) -> &'static str {
        match self {
            Column::Time => "TIME",
            Column::Method => "METHOD",
            Column::Path => "PATH",
            Column::Status => "STS",
            Column::Duration => "DURATION",
            Column::Outcome => "OUTCOME",
        }
    }
}

/// The path keeps at least this many columns before a lower-priority column is added.
const MIN_PATH_WIDTH: usize = 16;

/// The columns that fit in `width`, in display order, each with its width
/// (the path's is what is left): method, path and status always, then
/// duration, time and outcome, in that order, while the path keeps
/// [`MIN_PATH_WIDTH`]. Columns are one space apart.
fn columns(width: usize, time_width: usize, outcome_width: usize) -> Vec<(Column, usize)> {
    let used = |shown: &[(Column, usize)]| shown.iter().map(|(_, w)| w + 1).sum::<usize>();
    let mut shown = vec![(Column::Method, 7), (Column::Status, 3)];
    for extra in [(Column::Duration, 9), (Column::Time, time_width), (Column::Outcome, outcome_width)] {
        shown.push(extra);
        if width.saturating_sub(used(&shown)) < MIN_PATH_WIDTH {
            shown.pop();
            break;
        }
    }
    shown.push((Column::Path, width.saturating_sub(used(&shown))));
    shown.sort_by_key(|&(column, _)| column);
    shown
}

/// A record's cell in `column`, `width` wide.
fn cell(r: &Summary, column: Column, width: usize) -> Cell<'static> {
    Cell::new(match column {
        Column::Time => r.clock().chars().take(width).collect::<String>(),
        Column::Method => r.method.clone(),
        Column::Path => fit(&clean(&r.path), width),
        Column::Status => r.status_text(),
        Column::Duration => r.duration_text(),
        Column::Outcome => r.outcome_text(),
    })
}

/// The list's first row: ratatui scrolls only to keep the selection in view,
/// so after a shrink and a grow the newest rows would stay hidden above it with
/// empty rows below. Moved up as far as the room allows (ratatui then still
/// scrolls down to the selection if needed).
fn list_offset(offset: usize, len: usize, height: usize) -> usize {
    offset.min(len.saturating_sub(height))
}

fn draw_detail(f: &mut Frame, app: &App, area: Rect) {
    let title = app.selected.as_deref().map_or_else(|| " Detail ".to_owned(), |id| format!(" {id} "));
    let block = Block::new().borders(Borders::ALL).title(title);
    let (width, height) = (area.width.saturating_sub(2), area.height.saturating_sub(2));
    let lines: Vec<Line> = match app.detail() {
        None => vec![Line::raw("Waiting for requests: send one to the public URL.")],
        Some(Detail::Loading) => vec![Line::raw("Loading…")],
        Some(Detail::Failed(err)) => vec![Line::styled(format!("Cannot load: {}", clean(err)), Color::Red)],
        Some(Detail::Loaded(detail)) => detail
            .iter()
            .flat_map(|l| wrap(&l.text, width).into_iter().map(move |row| Line::styled(row, kind_style(l.kind))))
            .skip(usize::from(app.scroll))
            .take(usize::from(height))
            .collect(),
    };
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn kind_style(kind: LineKind) -> Style {
    match kind {
        LineKind::Title => Style::new().add_modifier(Modifier::BOLD),
        LineKind::Heading => Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        LineKind::Header => Style::new().fg(Color::Gray),
        LineKind::Body | LineKind::Blank => Style::new(),
        LineKind::Note => Style::new().fg(Color::DarkGray),
    }
}

fn draw_help(f: &mut Frame, over: Rect) {
    let width = (HELP_LONG.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(over.width);
    let height = (HELP_LONG.len() as u16 + 2).min(over.height);
    let area = Rect { x: over.x + (over.width - width) / 2, y: over.y + (over.height - height) / 2, width, height };
    let text: Vec<Line> = HELP_LONG.iter().map(|l| Line::raw(format!(" {l}"))).collect();
    f.render_widget(Clear, area);
    f.render_widget(Paragraph::new(text).block(Block::new().borders(Borders::ALL).title(" Keys ")), area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor_cli::app::{Key, Msg};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn screen(app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(140, 20)).unwrap();
        terminal.draw(|f| draw(f, app, &mut TableState::default())).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol().to_owned()).collect::<String>() + "\n")
            .collect()
    }

    /// The screen drawn at `width`×`height`, keeping the list's state as a
    /// running monitor does.
    fn draw_at(app: &App, list: &mut TableState, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app, list)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol().to_owned()).collect::<String>() + "\n")
            .collect()
    }

    fn record(i: usize) -> Summary {
        serde_json::from_value(json!({"id": format!("req_{i}"), "time": "2026-11-22T10:00:00Z", "method": "POST",
                                      "path": format!("/hook/{i}"), "status": 200, "durationMs": 1.0,
                                      "outcome": "ok"}))
        .unwrap()
    }

    #[test]
    fn the_list_shows_the_newest_rows_again_after_a_shrink_and_a_grow() {
        let mut app = App::new("tun_1");
        app.apply(Msg::Backfill((1..=6).map(record).collect()));
        app.key(Key::End);
        let mut list = TableState::default();
        let s = draw_at(&app, &mut list, 140, 35);
        assert!((1..=6).all(|i| s.contains(&format!("/hook/{i} "))), "{s}");
        draw_at(&app, &mut list, 20, 5);
        let s = draw_at(&app, &mut list, 200, 50);
        assert!((1..=6).all(|i| s.contains(&format!("/hook/{i} "))), "all six fit again:\n{s}");
        assert_eq!(list.offset(), 0);
        // Too small for all: the selection (the oldest) stays in view.
        let s = draw_at(&app, &mut list, 140, 10);
        assert!(s.contains("/hook/1 ") && !s.contains("/hook/6 "), "{s}");
        assert_eq!(list_offset(3, 6, 4), 2);
        assert_eq!(list_offset(1, 6, 4), 1);
        assert_eq!(list_offset(5, 6, 0), 5);
    }

    /// At 80 columns and less, the header keeps the connection state whole
    /// and cuts the URL with an ellipsis (it was cut mid-port, and the state
    /// to "con").
    #[test]
    fn a_narrow_header_keeps_the_state_and_cuts_the_url_visibly() {
        let mut app = App::new("tun_0123456789abcdef");
        app.apply(Msg::Connected { url: "https://tunnels.example.com/t/cool-sunset-x7kf".into() });
        let s = draw_at(&app, &mut TableState::default(), 80, 20);
        let first = s.lines().next().unwrap();
        assert!(
            first.contains(" connected ") && first.contains("https://tunnels.example.com/t/cool-sunset-x7kf"),
            "{first}"
        );
        let s = draw_at(&app, &mut TableState::default(), 60, 20);
        let first = s.lines().next().unwrap();
        assert!(first.contains(" connected ") && first.contains("https://tunnels.example.com/t/…"), "{first}");
        app.apply(Msg::Reconnecting {
            reason: "the server is shutting down".into(),
            retry_in: std::time::Duration::from_millis(200),
        });
        let s = draw_at(&app, &mut TableState::default(), 60, 20);
        let first = s.lines().next().unwrap();
        assert!(first.contains("reconnecting in 0.2s") && first.contains("https://"), "{first}");
        let s = draw_at(&app, &mut TableState::default(), 140, 20);
        assert!(s.lines().next().unwrap().contains("tun_0123456789abcdef"), "{s}");
    }

    #[test]
    fn narrow_lists_keep_method_path_and_status_first() {
        let mut app = App::new("tun_1");
        app.apply(Msg::Backfill((1..=2).map(record).collect()));
        let s = draw_at(&app, &mut TableState::default(), 50, 20);
        let header = s.lines().find(|l| l.contains("PATH")).unwrap_or_else(|| panic!("no header:\n{s}"));
        let header: Vec<&str> = header.split('│').nth(1).unwrap().split_whitespace().collect();
        assert_eq!(header, ["METHOD", "PATH", "STS"], "{s}");
        let row = s.lines().find(|l| l.contains("/hook/1")).unwrap_or_else(|| panic!("no row:\n{s}"));
        assert!(row.contains("POST") && row.contains("200"), "{row}");
        // Each further column comes in priority order as the path keeps its minimum.
        let titles = |width| columns(width, 8, 7).into_iter().map(|(c, _)| c.title()).collect::<Vec<_>>();
        assert_eq!(titles(12 + 15), ["METHOD", "PATH", "STS"]);
        assert_eq!(titles(12 + 16 + 10), ["METHOD", "PATH", "STS", "DURATION"]);
        assert_eq!(titles(12 + 16 + 10 + 9), ["TIME", "METHOD", "PATH", "STS", "DURATION"]);
        assert_eq!(titles(12 + 16 + 10 + 9 + 8), ["TIME", "METHOD", "PATH", "STS", "DURATION", "OUTCOME"]);
        assert_eq!(columns(100, 8, 7)[2], (Column::Path, 100 - 12 - 10 - 9 - 8), "the path takes the rest");
    }

    #[test]
    fn draws_header_list_detail_and_help() {
        let mut app = App::new("tun_1");
        app.apply(Msg::Connected { url: "http://h/t/sub".into() });
        let rec = json!({"id": "req_1", "time": "2026-11-22T10:00:00Z", "method": "POST", "path": "/hook",
                         "status": 502, "durationMs": 3.0, "outcome": "local-unreachable",
                         "request": {"headers": {}, "body": "{\"k\":1}", "bodyEncoding": "utf8", "bodySize": 7,
                                     "truncated": false}, "response": null});
        app.apply(Msg::Record(serde_json::from_value(rec.clone()).unwrap()));
        app.apply(Msg::Detail { id: "req_1".into(), result: Ok(rec) });
        let s = screen(&app);
        for expected in ["http://h/t/sub", "connected", "requests: 1", "/hook", "502", "local-unreachable", "\"k\": 1"]
        {
            assert!(s.contains(expected), "{expected:?} missing from\n{s}");
        }
        assert!(s.contains("r replay") && s.contains("q/Esc quit"), "{s}");
        // A path too long for its column ends in an ellipsis instead of running into the next one.
        let long = json!({"id": "req_2", "time": "2026-11-22T10:00:01Z", "method": "GET",
                          "path": format!("/{}", "x".repeat(200)), "status": 200, "outcome": "ok"});
        app.apply(Msg::Record(serde_json::from_value(long).unwrap()));
        let s = screen(&app);
        let row = s.lines().find(|l| l.contains("/xxx")).unwrap();
        assert!(row.contains("x… 200"), "{row}");
        assert!(s.contains("? more help"), "{s}");
        app.help = true;
        let s = screen(&app);
        assert!(s.contains("replay the selected request"), "{s}");
        let hint = s.lines().last().unwrap();
        assert!(hint.contains("?/Esc close this help") && !hint.contains("more help"), "{hint}");
    }
}
