//! The client's per-request log lines, written from a thread of their own.
//!
//! The tunnel client runs on one thread; writing a line to stdout there is a
//! syscall per forwarded request and, when the terminal or pipe is slow,
//! would stall forwarding itself. Lines go through a bounded queue to a
//! writer thread that writes whatever is queued in one go and flushes when
//! the queue is empty, so lines still show at once when traffic is light.
//! If the output cannot keep up, lines are dropped and the count is reported
//! in their place: a full terminal never slows the tunnel.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Which stream a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Handle for queueing lines; cheap to clone into event callbacks.
#[derive(Clone)]
pub struct Lines {
    tx: SyncSender<(Stream, String)>,
    dropped: Arc<AtomicU64>,
}

impl Lines {
    /// Queues `text` (with its newlines), or drops and counts it when the queue is full.
    pub fn send(&self, stream: Stream, text: String) {
        match self.tx.try_send((stream, text)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The writer thread; [`Printer::finish`] writes what is left and joins it.
pub struct Printer {
    lines: Option<Lines>,
    thread: Option<JoinHandle<()>>,
}

impl Printer {
    /// Starts the writer thread.
    pub fn spawn() -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("hookway-output".into())
            .spawn(move || write_lines(rx, &counter))
            .expect("spawn the output thread");
        Self { lines: Some(Lines { tx, dropped }), thread: Some(thread) }
    }

    /// A handle for queueing lines.
    pub fn lines(&self) -> Lines {
        self.lines.clone().expect("printer is running")
    }

    /// Writes everything queued so far, then stops the thread (once every
    /// [`Lines`] handle is dropped too).
    pub fn finish(mut self) {
        self.lines = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_lines(rx: Receiver<(Stream, String)>, dropped: &AtomicU64) {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let mut reported = 0;
    // Blocks for the first line, then takes whatever else is queued before flushing.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut out_buf = Vec::new();
        while let Some((stream, text)) = next {
            match stream {
                Stream::Stdout => out_buf.extend_from_slice(text.as_bytes()),
                Stream::Stderr => {
                    // Keep the order between the two streams.
                    let _ = out.write_all(&out_buf);
                    let _ = out.flush();
                    out_buf.clear();
                    let _ = err.write_all(text.as_bytes());
                }
            }
            if out_buf.len() >= 64 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            let _ = writeln!(err, "… {} log lines dropped: the output could not keep up", lost - reported);
            reported = lost;
        }
        let _ = out.write_all(&out_buf);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_queue_and_are_dropped_and_counted_when_full() {
        let (tx, rx) = sync_channel(2);
        let lines = Lines { tx, dropped: Arc::new(AtomicU64::new(0)) };
        for i in 0..5 {
            lines.send(Stream::Stdout, format!("{i}\n"));
        }
        assert_eq!(lines.dropped.load(Ordering::Relaxed), 3);
        let got: Vec<String> = rx.try_iter().map(|(_, t)| t).collect();
        assert_eq!(got, ["0\n", "1\n"]);
    }
}
