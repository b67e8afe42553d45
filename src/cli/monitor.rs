//! `hookway tunnels monitor ID PORT` and `hookway start PORT --monitor`: the
//! tunnel client runs in the background while a full-screen view lists the
//! requests it captured (live, from the server's event stream), shows one in
//! full and replays it. The state lives in [`app`], the drawing in [`ui`]; this
//! file does the IO: terminal, API calls, the stream and the client task.

#[path = "monitor/app.rs"]
mod app;
#[path = "monitor/sse.rs"]
mod sse;
#[path = "monitor/ui.rs"]
mod ui;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use crossterm::event::{Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use hookway::client::{self, ApiClient, ClientConfig, Event};
use hookway::shutdown::Shutdown;
use ratatui::widgets::TableState;
use reqwest::Method;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::inspect_cli::records;
use app::{Action, App, Conn, Key, Msg};

/// Messages waiting for the screen; the stream reader waits when it is full.
const CHANNEL: usize = 1024;
/// Records fetched when the stream (re)opens, to show what came before.
const BACKFILL: usize = 200;
/// Detail and replay calls in flight at once (holding Down must not fire a
/// request per record all at the same time).
const MAX_CALLS: usize = 4;
/// The server comments every 15 s: three missed keep-alives mean the stream is dead.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// Redraws at least this often, to show log lines and reconnection countdowns.
const TICK: Duration = Duration::from_millis(250);
/// Time the client gets to close its connection cleanly on quit.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves the tunnel and shows the monitor until the user quits; fails with
/// the server's reason when it ended the session.
pub async fn run(server: &str, api_key: Option<String>, config: ClientConfig) -> Result<()> {
    let api = ApiClient::new(server, api_key.clone());
    let tunnel = config.tunnel_id.clone();
    let (tx, rx) = mpsc::channel(CHANNEL);
    let stop = CancellationToken::new();
    let client_stop = Shutdown::new();
    let client = tokio::spawn(client_task(config, tx.clone(), client_stop.clone()));
    let stream = Stream { api: api.clone(), key: api_key, tunnel: tunnel.clone() };
    tokio::spawn(feed(stream, tx.clone(), stop.clone()));
    let io = Io { api, tunnel: tunnel.clone(), tx, calls: Arc::new(Semaphore::new(MAX_CALLS)) };
    let mut app = App::new(&tunnel);
    let signals = crate::shutdown_on_signal();
    let result = {
        let mut screen = Screen::enter()?;
        ui_loop(&mut screen.0, &mut app, rx, &io, signals.stop_token()).await
    };
    stop.cancel();
    client_stop.stop();
    // The next signal cuts the client's drain short: the second one when a
    // signal ended the monitor, the first when a key did.
    let next_signal =
        if signals.stop_token().is_cancelled() { signals.cut_token() } else { signals.stop_token() }.clone();
    tokio::spawn(async move {
        next_signal.cancelled().await;
        client_stop.cut();
    });
    // Requests in flight may take the client's whole drain, then its goodbye.
    let _ = tokio::time::timeout(client::DRAIN + CLOSE_GRACE, client).await;
    result?;
    match app.conn {
        Conn::Ended { reason } => bail!("{reason}"),
        _ => Ok(()),
    }
}

/// The terminal in full-screen mode; leaving it (also on error) restores it.
/// `ratatui::try_init` also installs a panic hook that restores it first.
struct Screen(ratatui::DefaultTerminal);

impl Screen {
    fn enter() -> Result<Self> {
        Ok(Self(ratatui::try_init()?))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What the loop needs to start API calls.
struct Io {
    api: ApiClient,
    tunnel: String,
    tx: mpsc::Sender<Msg>,
    calls: Arc<Semaphore>,
}

async fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    mut rx: mpsc::Receiver<Msg>,
    io: &Io,
    signals: &CancellationToken,
) -> Result<()> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    let mut list = TableState::default();
    loop {
        let size = terminal.size()?;
        (app.width, app.page) = ui::detail_size(ratatui::layout::Rect::new(0, 0, size.width, size.height));
        terminal.draw(|f| ui::draw(f, app, &mut list))?;
        let action = tokio::select! {
            event = keys.next() => match event {
                Some(Ok(TermEvent::Key(key))) if key.kind == KeyEventKind::Press => to_key(key).and_then(|k| app.key(k)),
                Some(Ok(_)) => None,
                Some(Err(err)) => return Err(err.into()),
                None => Some(Action::Quit),
            },
            Some(msg) = rx.recv() => app.apply(msg),
            _ = tick.tick() => take_logs().pop().and_then(|line| app.apply(Msg::Log(line))),
            _ = signals.cancelled() => Some(Action::Quit),
        };
        match action {
            None => {}
            Some(Action::Quit) => return Ok(()),
            Some(Action::FetchDetail(id)) => io.fetch_detail(id),
            Some(Action::Replay(id)) => io.replay(id),
        }
    }
}

fn to_key(key: KeyEvent) -> Option<Key> {
    Some(match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Esc => Key::Esc,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}

impl Io {
    fn fetch_detail(&self, id: String) {
        let path = format!("/api/tunnels/{}/requests/{id}", self.tunnel);
        self.call(false, path, move |result| Msg::Detail { id, result });
    }

    fn replay(&self, of: String) {
        let path = format!("/api/tunnels/{}/requests/{of}/replay", self.tunnel);
        self.call(true, path, move |result| Msg::Replayed { of, result });
    }

    /// GETs (or POSTs `{}` to) `path` off the loop and sends the answer's
    /// `request` object back as a message.
    fn call(
        &self,
        post: bool,
        path: String,
        msg: impl FnOnce(Result<serde_json::Value, String>) -> Msg + Send + 'static,
    ) {
        let (api, tx, calls) = (self.api.clone(), self.tx.clone(), self.calls.clone());
        tokio::spawn(async move {
            let Ok(_permit) = calls.acquire().await else { return };
            let answer = if post {
                api.call(Method::POST, &path, Some(&serde_json::json!({}))).await
            } else {
                api.call(Method::GET, &path, None).await
            };
            let result = answer.map(|mut v| v["request"].take()).map_err(|e| e.to_string());
            let _ = tx.send(msg(result)).await;
        });
    }
}

/// Runs the tunnel client, turning its events into messages instead of lines
/// on the terminal (the screen belongs to the monitor).
async fn client_task(config: ClientConfig, tx: mpsc::Sender<Msg>, stop: Shutdown) {
    let events = tx.clone();
    let on_event = move |event: Event| {
        let msg = match event {
            Event::Connected { hello, .. } => Msg::Connected { url: hello.tunnel_url },
            Event::Reconnecting { reason, retry_in, .. } => Msg::Reconnecting { reason, retry_in },
            // The record arrives through the stream, with more than the client knows.
            Event::Request(_) => return,
            // (The header already says it is connecting.)
            Event::SlowConnect { .. } => return,
            // Only after the screen is gone (the client is stopped once the
            // UI loop has ended), so the line `start` prints is safe here too.
            stopping @ Event::Stopping { .. } => {
                eprint!("{}", crate::render_event(&stopping, false, "").1);
                return;
            }
        };
        // Connection changes are rare (backoff ≥ 250 ms): a full queue means the
        // screen is gone, and dropping is then harmless.
        let _ = events.try_send(msg);
    };
    if let Err(err) = client::run(config, on_event, stop).await {
        let _ = tx.send(Msg::Ended { reason: err.to_string() }).await;
    }
}

/// Where the live stream comes from.
struct Stream {
    api: ApiClient,
    key: Option<String>,
    tunnel: String,
}

/// Keeps the list fed: opens the stream, backfills what came before (after
/// subscribing, so nothing falls in between; the app drops duplicates), then
/// forwards each record; reopens with backoff when the stream fails.
async fn feed(stream: Stream, tx: mpsc::Sender<Msg>, stop: CancellationToken) {
    let mut backoff = client::MIN_BACKOFF;
    loop {
        let reason = tokio::select! {
            _ = stop.cancelled() => return,
            reason = follow(&stream, &tx, &mut backoff) => reason,
        };
        if tx.send(Msg::StreamDown { reason, retry_in: backoff }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(client::MAX_BACKOFF);
    }
}

/// One stream connection, until it fails; returns why.
async fn follow(stream: &Stream, tx: &mpsc::Sender<Msg>, backoff: &mut Duration) -> String {
    hookway::quic::tls::install_default_provider();
    let http =
        match reqwest::Client::builder().connect_timeout(client::CONNECT_TIMEOUT).read_timeout(STREAM_IDLE).build() {
            Ok(http) => http,
            Err(err) => return err.to_string(),
        };
    let url = format!("{}/api/tunnels/{}/requests/stream", stream.api.base(), stream.tunnel);
    let mut req = http.get(&url).header("accept", "text/event-stream");
    if let Some(key) = &stream.key {
        req = req.bearer_auth(key);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(err) => return format!("cannot open the live stream: {err}"),
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        return format!("live stream refused: {} (HTTP {status})", body["error"].as_str().unwrap_or(""));
    }
    let list = format!("/api/tunnels/{}/requests?limit={BACKFILL}", stream.tunnel);
    match stream.api.call(Method::GET, &list, None).await {
        Ok(v) => {
            let records = v["requests"].as_array().into_iter().flatten();
            let records = records.filter_map(|r| serde_json::from_value(r.clone()).ok()).collect();
            if tx.send(Msg::Backfill(records)).await.is_err() {
                return String::new();
            }
        }
        Err(err) => return format!("cannot list requests: {err}"),
    }
    if tx.send(Msg::StreamLive).await.is_err() {
        return String::new();
    }
    *backoff = client::MIN_BACKOFF;
    let mut parser = sse::SseParser::default();
    let mut body = resp.bytes_stream();
    loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(err)) => return format!("live stream broke: {err}"),
            None => return "live stream ended".to_owned(),
        };
        let events = match parser.push(&chunk) {
            Ok(events) => events,
            Err(err) => return err.to_string(),
        };
        for event in events {
            if event.event == "lagged" {
                // The server dropped events for this slow reader: list again.
                return "live stream fell behind".to_owned();
            }
            if event.event != "request" {
                continue;
            }
            match serde_json::from_str(&event.data) {
                Ok(record) => {
                    if tx.send(Msg::Record(record)).await.is_err() {
                        return String::new();
                    }
                }
                Err(err) => {
                    let _ = tx.send(Msg::Log(format!("unreadable stream event {}: {err}", event.id))).await;
                }
            }
        }
    }
}

/// Log lines kept for the status line while the monitor owns the terminal.
static LOGS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
/// Lines kept between two redraws; older ones are dropped.
const MAX_LOGS: usize = 64;

fn take_logs() -> Vec<String> {
    LOGS.lock().map(|mut logs| logs.drain(..).collect()).unwrap_or_default()
}

/// A `tracing` writer for while the monitor runs: lines go to its status line,
/// not to stderr, where they would tear through the screen.
pub struct UiLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for UiLog {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One formatted log event, handed over when dropped.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = strip_ansi(&String::from_utf8_lossy(&self.0));
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if let Ok(mut logs) = LOGS.lock() {
            if logs.len() >= MAX_LOGS {
                logs.pop_front();
            }
            logs.push_back(line.to_owned());
        }
    }
}

/// Text without the colour escapes `tracing` adds for terminals.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_reach_the_status_line_without_colours() {
        let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&UiLog);
        line.write_all(b"\x1b[33m WARN\x1b[0m hookway: something\n").unwrap();
        drop(line);
        assert_eq!(take_logs(), ["WARN hookway: something"]);
        assert!(take_logs().is_empty());
    }
}
