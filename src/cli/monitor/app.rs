//! The monitor's state, without IO or drawing: messages and keys go in,
//! actions for the IO loop come out, so every transition is unit-tested.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::records::{DetailLine, Summary, detail_lines};

/// Records kept in the list: the server's default retention per tunnel.
pub const MAX_RECORDS: usize = 1000;
/// Details kept in the cache; older ones are fetched again when selected.
pub const MAX_DETAILS: usize = 200;
/// Body lines rendered per body: more would make every redraw slow, and
/// `hookway tunnels request` prints them all.
pub const MAX_BODY_LINES: usize = 2000;

/// The tunnel client's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    /// Before the first handshake.
    Connecting,
    /// Live.
    Connected,
    /// Lost; retrying.
    Reconnecting { reason: String, retry_in: Duration },
    /// The server ended the session for good.
    Ended { reason: String },
}

/// What the IO side tells the app.
#[derive(Debug, Clone)]
pub enum Msg {
    /// The client connected; the tunnel's public URL.
    Connected { url: String },
    /// The client lost the connection.
    Reconnecting { reason: String, retry_in: Duration },
    /// The client stopped for good.
    Ended { reason: String },
    /// The records the list endpoint returned (newest first).
    Backfill(Vec<Summary>),
    /// One record from the live stream.
    Record(Summary),
    /// The live stream is open.
    StreamLive,
    /// The live stream failed; retried after `retry_in`.
    StreamDown { reason: String, retry_in: Duration },
    /// A detail fetch finished (`Ok` holds the API's `request` object).
    Detail { id: String, result: Result<serde_json::Value, String> },
    /// A replay finished (`Ok` holds the new record's detail).
    Replayed { of: String, result: Result<serde_json::Value, String> },
    /// A log line that would otherwise have gone to the terminal.
    Log(String),
}

/// Keys the monitor reacts to, free of the terminal library's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Char(char),
    Esc,
    CtrlC,
}

/// Work for the IO loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch this record's detail.
    FetchDetail(String),
    /// Replay this record.
    Replay(String),
    /// Leave.
    Quit,
}

/// A record's detail, as far as it is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Loading,
    Loaded(Vec<DetailLine>),
    Failed(String),
}

/// Everything the screen shows.
#[derive(Debug)]
pub struct App {
    /// Tunnel being served.
    pub tunnel_id: String,
    /// Public URL, once connected.
    pub url: Option<String>,
    /// Client state.
    pub conn: Conn,
    /// Live stream state: `None` while it is open.
    pub stream_error: Option<String>,
    /// Newest first, by id.
    pub records: Vec<Summary>,
    /// Selected record, by id so that arrivals on top do not move it.
    pub selected: Option<String>,
    details: HashMap<String, Detail>,
    detail_order: VecDeque<String>,
    /// First detail line shown.
    pub scroll: u16,
    /// Rows the detail pane shows at once (set by the IO side on resize).
    pub page: u16,
    /// Columns of the detail pane, where its lines wrap.
    pub width: u16,
    /// The status line: the last replay's result or error.
    pub status: String,
    /// The last log line, kept apart so that chatty logs do not hide the status.
    pub log: Option<String>,
    /// Whether the key help is expanded.
    pub help: bool,
}

impl App {
    /// A fresh screen for `tunnel_id`.
    pub fn new(tunnel_id: &str) -> Self {
        Self {
            tunnel_id: tunnel_id.to_owned(),
            url: None,
            conn: Conn::Connecting,
            stream_error: None,
            records: Vec::new(),
            selected: None,
            details: HashMap::new(),
            detail_order: VecDeque::new(),
            scroll: 0,
            page: 10,
            width: 80,
            status: String::new(),
            log: None,
            help: false,
        }
    }

    /// Index of the selected record in [`App::records`].
    pub fn selected_index(&self) -> Option<usize> {
        let id = self.selected.as_deref()?;
        self.records.binary_search_by(|r| id.cmp(r.id.as_str())).ok()
    }

    /// The selected record's detail state.
    pub fn detail(&self) -> Option<&Detail> {
        self.details.get(self.selected.as_deref()?)
    }

    /// Applies a message; may ask for a detail fetch (the first record
    /// selects itself).
    pub fn apply(&mut self, msg: Msg) -> Option<Action> {
        match msg {
            Msg::Connected { url } => {
                self.url = Some(url);
                self.conn = Conn::Connected;
            }
            Msg::Reconnecting { reason, retry_in } => self.conn = Conn::Reconnecting { reason, retry_in },
            Msg::Ended { reason } => self.conn = Conn::Ended { reason },
            Msg::Backfill(records) => {
                for r in records {
                    self.insert(r);
                }
            }
            Msg::Record(r) => self.insert(r),
            Msg::StreamLive => self.stream_error = None,
            Msg::StreamDown { reason, retry_in } => {
                self.stream_error = Some(format!("{reason}; retrying in {:.1}s", retry_in.as_secs_f64()));
            }
            Msg::Detail { id, result } => {
                let detail = match result {
                    Ok(v) => Detail::Loaded(detail_lines(&v, MAX_BODY_LINES)),
                    Err(e) => Detail::Failed(e),
                };
                self.cache(id, detail);
            }
            Msg::Replayed { of, result } => match result {
                Ok(v) => match serde_json::from_value::<Summary>(v.clone()) {
                    Ok(new) => {
                        self.status = format!(
                            "Replayed {of} as {}: {} {} in {}",
                            new.id,
                            new.status_text(),
                            new.outcome,
                            new.duration_text()
                        );
                        self.cache(new.id.clone(), Detail::Loaded(detail_lines(&v, MAX_BODY_LINES)));
                        self.insert(new);
                    }
                    Err(e) => self.status = format!("Replay of {of}: unexpected answer: {e}"),
                },
                Err(e) => self.status = format!("Replay of {of} failed: {e}"),
            },
            Msg::Log(line) => self.log = Some(line),
        }
        if self.selected.is_none() {
            let first = self.records.first()?.id.clone();
            return self.select(first);
        }
        None
    }

    /// Applies a key.
    pub fn key(&mut self, key: Key) -> Option<Action> {
        match key {
            // Esc closes the help first: quitting takes the tunnel offline.
            Key::Esc if self.help => self.help = false,
            Key::Char('q') | Key::Esc | Key::CtrlC => return Some(Action::Quit),
            Key::Char('?') => self.help = !self.help,
            Key::Char('r') => {
                let id = self.selected.clone()?;
                self.status = format!("Replaying {id}…");
                return Some(Action::Replay(id));
            }
            Key::PageDown => self.scroll = self.scroll.saturating_add(self.page.max(1)).min(self.max_scroll()),
            Key::PageUp => self.scroll = self.scroll.saturating_sub(self.page.max(1)),
            Key::Up | Key::Down | Key::Home | Key::End | Key::Char('k' | 'j') => return self.move_selection(key),
            Key::Char(_) => {}
        }
        None
    }

    fn move_selection(&mut self, key: Key) -> Option<Action> {
        let index = self.selected_index();
        let last = self.records.len().checked_sub(1)?;
        let target = match key {
            Key::Up | Key::Char('k') => index.map_or(0, |i| i.saturating_sub(1)),
            Key::Down | Key::Char('j') => index.map_or(0, |i| (i + 1).min(last)),
            Key::Home => 0,
            Key::End => last,
            _ => return None,
        };
        let id = self.records[target].id.clone();
        if Some(target) == index {
            return None;
        }
        self.select(id)
    }

    /// Rows of the current detail minus a page, so PageDown stops at the end.
    fn max_scroll(&self) -> u16 {
        let rows = match self.detail() {
            Some(Detail::Loaded(lines)) => lines.iter().map(|l| rows(&l.text, self.width)).sum(),
            _ => 0,
        };
        u16::try_from(rows.saturating_sub(usize::from(self.page))).unwrap_or(u16::MAX)
    }

    fn select(&mut self, id: String) -> Option<Action> {
        self.selected = Some(id.clone());
        self.scroll = 0;
        match self.details.get(&id) {
            Some(Detail::Loaded(_) | Detail::Loading) => None,
            Some(Detail::Failed(_)) | None => {
                self.cache(id.clone(), Detail::Loading);
                Some(Action::FetchDetail(id))
            }
        }
    }

    /// Inserts in id order (newest first), once; drops the oldest past
    /// [`MAX_RECORDS`].
    fn insert(&mut self, r: Summary) {
        if let Err(at) = self.records.binary_search_by(|x| r.id.cmp(&x.id)) {
            self.records.insert(at, r);
        }
        if self.records.len() > MAX_RECORDS {
            let dropped = self.records.pop().map(|r| r.id);
            if dropped.is_some() && dropped == self.selected {
                self.selected = self.records.last().map(|r| r.id.clone());
            }
        }
    }

    fn cache(&mut self, id: String, detail: Detail) {
        if self.details.insert(id.clone(), detail).is_none() {
            self.detail_order.push_back(id);
        }
        while self.detail_order.len() > MAX_DETAILS {
            if let Some(old) = self.detail_order.pop_front() {
                self.details.remove(&old);
            }
        }
    }
}

/// Rows `text` takes in a pane `width` columns wide (see [`wrap`]).
pub fn rows(text: &str, width: u16) -> usize {
    text.chars().count().div_ceil(usize::from(width.max(1))).max(1)
}

/// `text` cut into rows of `width` characters: the detail pane wraps by hand,
/// not by words, so that [`rows`] knows exactly where the end is.
pub fn wrap(text: &str, width: u16) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(usize::from(width.max(1))).map(|c| c.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rec(id: &str) -> Summary {
        serde_json::from_value(json!({"id": id, "time": "2026-11-22T10:00:00Z", "method": "POST",
            "path": format!("/{id}"), "status": 200, "durationMs": 1.0, "outcome": "ok"}))
        .unwrap()
    }

    fn detail(id: &str, body: &str) -> Value {
        json!({"id": id, "method": "POST", "path": "/", "status": 200, "outcome": "ok",
               "request": {"headers": {}, "body": body, "bodyEncoding": "utf8", "bodySize": body.len(),
                           "truncated": false},
               "response": null})
    }

    fn ids(app: &App) -> Vec<&str> {
        app.records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn records_sort_newest_first_without_duplicates_and_the_first_selects_itself() {
        let mut app = App::new("tun_1");
        assert_eq!(app.apply(Msg::Record(rec("req_2"))), Some(Action::FetchDetail("req_2".into())));
        assert_eq!(app.detail(), Some(&Detail::Loading));
        // The backfill overlaps the stream: nothing twice, order by id.
        assert_eq!(app.apply(Msg::Backfill(vec![rec("req_3"), rec("req_2"), rec("req_1")])), None);
        app.apply(Msg::Record(rec("req_4")));
        assert_eq!(ids(&app), ["req_4", "req_3", "req_2", "req_1"]);
        // Arrivals do not move the selection.
        assert_eq!(app.selected.as_deref(), Some("req_2"));
        assert_eq!(app.selected_index(), Some(2));
    }

    #[test]
    fn keys_move_the_selection_and_fetch_each_detail_once() {
        let mut app = App::new("tun_1");
        assert_eq!(app.key(Key::Down), None, "no records: nothing to select");
        assert_eq!(app.key(Key::Char('q')), Some(Action::Quit), "quitting needs no records");
        app.apply(Msg::Backfill(vec![rec("req_3"), rec("req_2"), rec("req_1")]));
        assert_eq!(app.selected.as_deref(), Some("req_3"));
        assert_eq!(app.key(Key::Up), None, "already at the top");
        assert_eq!(app.key(Key::Char('j')), Some(Action::FetchDetail("req_2".into())));
        assert_eq!(app.key(Key::Down), Some(Action::FetchDetail("req_1".into())));
        assert_eq!(app.key(Key::Down), None, "already at the bottom");
        // req_3's fetch is still under way: not asked again.
        assert_eq!(app.key(Key::Home), None);
        app.apply(Msg::Detail { id: "req_2".into(), result: Err("boom".into()) });
        assert_eq!(app.key(Key::Char('k')), None);
        assert_eq!(app.selected.as_deref(), Some("req_3"));
        // A failed fetch is retried when selected again.
        assert_eq!(app.key(Key::Down), Some(Action::FetchDetail("req_2".into())));
        assert_eq!(app.key(Key::End), None);
        for quit in [Key::Char('q'), Key::Esc, Key::CtrlC] {
            assert_eq!(app.key(quit), Some(Action::Quit));
        }
        app.key(Key::Char('?'));
        assert!(app.help);
        assert_eq!(app.key(Key::Esc), None, "Esc closes the help, and does not quit");
        assert!(!app.help);
    }

    #[test]
    fn details_render_once_and_scroll_within_bounds() {
        let mut app = App::new("tun_1");
        app.apply(Msg::Record(rec("req_1")));
        let body = (0..50).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n");
        app.apply(Msg::Detail { id: "req_1".into(), result: Ok(detail("req_1", &body)) });
        let Some(Detail::Loaded(lines)) = app.detail() else { panic!("loaded") };
        assert!(lines.iter().any(|l| l.text == "  line 49"));
        let total = lines.len() as u16;
        app.page = 20;
        app.width = 200;
        app.key(Key::PageDown);
        assert_eq!(app.scroll, 20);
        for _ in 0..5 {
            app.key(Key::PageDown);
        }
        assert_eq!(app.scroll, total - 20, "stops with the last line at the bottom");
        app.key(Key::PageUp);
        assert_eq!(app.scroll, total - 40);
        // Selecting another record starts at its top.
        app.apply(Msg::Record(rec("req_2")));
        app.key(Key::Up);
        assert_eq!(app.scroll, 0);
    }

    #[test]
    fn wrapping_counts_rows() {
        assert_eq!(wrap("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(wrap("", 3), [""]);
        assert_eq!((rows("abcdefg", 3), rows("abc", 3), rows("", 3)), (3, 1, 1));
    }

    #[test]
    fn replay_reports_and_inserts_the_new_record() {
        let mut app = App::new("tun_1");
        assert_eq!(app.key(Key::Char('r')), None, "nothing selected");
        app.apply(Msg::Record(rec("req_1")));
        assert_eq!(app.key(Key::Char('r')), Some(Action::Replay("req_1".into())));
        assert!(app.status.contains("Replaying req_1"));
        let mut new = detail("req_2", "x");
        new["replayOf"] = json!("req_1");
        new["durationMs"] = json!(2.25);
        app.apply(Msg::Replayed { of: "req_1".into(), result: Ok(new) });
        assert_eq!(app.status, "Replayed req_1 as req_2: 200 ok in 2.2 ms");
        assert_eq!(ids(&app), ["req_2", "req_1"]);
        assert_eq!(app.records[0].outcome_text(), "ok (replay)");
        // The answer carried the detail: selecting it fetches nothing.
        assert_eq!(app.key(Key::Up), None);
        assert!(matches!(app.detail(), Some(Detail::Loaded(_))));
        // The same record from the stream is not added twice.
        app.apply(Msg::Record(rec("req_2")));
        assert_eq!(app.records.len(), 2);
        app.apply(Msg::Replayed { of: "req_1".into(), result: Err("409 body not captured".into()) });
        assert_eq!(app.status, "Replay of req_1 failed: 409 body not captured");
    }

    #[test]
    fn connection_and_stream_states() {
        let mut app = App::new("tun_1");
        assert_eq!(app.conn, Conn::Connecting);
        app.apply(Msg::Connected { url: "http://x/t/a".into() });
        assert_eq!((app.conn.clone(), app.url.as_deref()), (Conn::Connected, Some("http://x/t/a")));
        let retry_in = Duration::from_millis(1500);
        app.apply(Msg::Reconnecting { reason: "lost".into(), retry_in });
        assert_eq!(app.conn, Conn::Reconnecting { reason: "lost".into(), retry_in });
        app.apply(Msg::Ended { reason: "tunnel deleted".into() });
        assert_eq!(app.conn, Conn::Ended { reason: "tunnel deleted".into() });
        app.apply(Msg::StreamDown { reason: "refused".into(), retry_in });
        assert_eq!(app.stream_error.as_deref(), Some("refused; retrying in 1.5s"));
        app.apply(Msg::StreamLive);
        assert_eq!(app.stream_error, None);
        app.status = "Replayed".into();
        app.apply(Msg::Log("WARN something".into()));
        assert_eq!((app.status.as_str(), app.log.as_deref()), ("Replayed", Some("WARN something")));
    }

    #[test]
    fn memory_is_bounded() {
        let mut app = App::new("tun_1");
        app.apply(Msg::Record(rec("req_0000")));
        for i in 1..=MAX_RECORDS {
            app.apply(Msg::Record(rec(&format!("req_{i:04}"))));
        }
        assert_eq!(app.records.len(), MAX_RECORDS);
        assert_eq!(app.selected.as_deref(), Some("req_0001"), "the dropped selection moves to the oldest kept");
        for i in 0..MAX_DETAILS + 10 {
            app.apply(Msg::Detail { id: format!("req_{i:04}"), result: Err("x".into()) });
        }
        assert_eq!(app.details.len(), MAX_DETAILS);
    }
}
