//! The client's per-request log lines, written from a thread of their own.
//!
//! The tunnel client runs on one thread; writing a line to stdout there is a
//! syscall per forwarded request and, when the terminal or pipe is slow,
//! would stall forwarding itself. Lines are queued instead, and a writer
//! thread writes whatever is queued in one go, at most every [`BATCH`]:
//! queueing a line costs an uncontended lock, and the writer is woken only
//! when the queue turns non-empty. If the output cannot keep up, lines are
//! dropped and the count is reported in their place: a full terminal never
//! slows the tunnel.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Least time between two writes: lines still show at once to a person,
/// while a busy tunnel's lines go out in batches.
const BATCH: Duration = Duration::from_millis(20);

/// Which stream a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Queue {
    lines: Vec<(Stream, String)>,
    dropped: u64,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle for queueing lines; cheap to clone into event callbacks.
#[derive(Clone)]
pub struct Lines(Arc<Shared>);

impl Lines {
    /// Queues `text` (with its newlines), or drops and counts it when the queue is full.
    pub fn send(&self, stream: Stream, text: String) {
        let mut q = self.0.lock();
        if q.lines.len() >= QUEUE {
            q.dropped += 1;
            return;
        }
        q.lines.push((stream, text));
        if q.lines.len() == 1 {
            drop(q);
            self.0.ready.notify_one();
        }
    }
}

/// The writer thread; [`Printer::finish`] writes what is left and joins it.
pub struct Printer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Printer {
    /// Starts the writer thread.
    pub fn spawn() -> Self {
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hookway-output".into())
            .spawn(move || write_lines(&writer))
            .expect("spawn the output thread");
        Self { shared, thread: Some(thread) }
    }

    /// A handle for queueing lines.
    pub fn lines(&self) -> Lines {
        Lines(self.shared.clone())
    }

    /// Writes everything queued so far and stops the thread.
    pub fn finish(mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_lines(shared: &Shared) {
    loop {
        let (lines, dropped, closed) = {
            let mut q = shared.lock();
            while q.lines.is_empty() && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            (std::mem::take(&mut q.lines), std::mem::take(&mut q.dropped), q.closed)
        };
        // Locked per batch, never while waiting: other threads (tracing, a
        // shutdown message) print too, and would block forever behind us.
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        let mut buf = Vec::new();
        for (stream, text) in lines {
            match stream {
                Stream::Stdout => buf.extend_from_slice(text.as_bytes()),
                Stream::Stderr => {
                    // Keep the order between the two streams.
                    let _ = out.write_all(&buf);
                    let _ = out.flush();
                    buf.clear();
                    let _ = err.write_all(text.as_bytes());
                }
            }
        }
        if dropped > 0 {
            let _ = writeln!(err, "… {dropped} log lines dropped: the output could not keep up");
        }
        let _ = out.write_all(&buf);
        let _ = out.flush();
        drop((out, err));
        if closed {
            return;
        }
        std::thread::sleep(BATCH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_queue_in_order_and_are_dropped_and_counted_when_full() {
        let lines = Lines(Arc::new(Shared::default()));
        for i in 0..QUEUE + 3 {
            lines.send(Stream::Stdout, format!("{i}\n"));
        }
        let q = lines.0.lock();
        assert_eq!((q.lines.len(), q.dropped), (QUEUE, 3));
        assert_eq!((q.lines[0].1.as_str(), q.lines[QUEUE - 1].1.as_str()), ("0\n", "16383\n"));
    }

    /// The writer thread must not keep stdout or stderr locked while it waits:
    /// a tracing event or a shutdown message printed from another thread would
    /// block forever, and with it the whole client.
    #[test]
    fn other_threads_can_print_while_the_writer_waits() {
        let printer = Printer::spawn();
        printer.lines().send(Stream::Stderr, String::new());
        std::thread::sleep(BATCH * 3);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop((std::io::stdout().lock(), std::io::stderr().lock()));
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok(), "stdout/stderr stayed locked by the writer");
        printer.finish();
    }
}
