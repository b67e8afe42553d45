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
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
    Stdout = 1,
    Stderr = 2,
}

/// The stream the writer is writing to right now (0: none).
static WRITING: AtomicU8 = AtomicU8::new(0);
/// Streams the writer was stuck on when the client stopped: nothing more is
/// written to them (a write would wait for ever behind the stuck one).
static STUCK: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Whether `stream` was left stuck by the writer (see [`Printer::finish`]).
pub fn stuck(stream: Stream) -> bool {
    STUCK[stream as usize - 1].load(Ordering::Relaxed)
}

/// Writes `bytes` to `stream`, noting meanwhile which stream is being written.
fn write_to(stream: Stream, bytes: &[u8]) {
    WRITING.store(stream as u8, Ordering::Relaxed);
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(bytes),
    };
    WRITING.store(0, Ordering::Relaxed);
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
    /// Set by the writer when it has written its last line.
    done: Mutex<bool>,
    finished: Condvar,
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

    /// Writes everything queued so far and stops the thread, waiting at most
    /// `within`. False when the writer is still stuck in a write then (a pipe
    /// nobody reads, a terminal paused with ctrl-s): the client must not wait
    /// on its output to stop, and a stream the writer holds cannot take
    /// another line, so the caller then says nothing more.
    pub fn finish(mut self, within: Duration) -> bool {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        let done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        let (done, _) =
            self.shared.finished.wait_timeout_while(done, within, |done| !*done).unwrap_or_else(|p| p.into_inner());
        if !*done {
            // (One terminal behind both, paused with ctrl-s, takes neither.)
            match WRITING.load(Ordering::Relaxed) {
                n @ (1 | 2) if !same_file_behind_both() => STUCK[usize::from(n) - 1].store(true, Ordering::Relaxed),
                _ => STUCK.iter().for_each(|s| s.store(true, Ordering::Relaxed)),
            }
            return false;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        true
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
        // Each stream locked for its own writes only, never while waiting:
        // other threads (tracing, a shutdown message) print too, and would
        // block forever behind us; and a stdout nobody reads must not keep
        // them from stderr.
        let mut buf = Vec::new();
        for (stream, text) in lines {
            match stream {
                Stream::Stdout => buf.extend_from_slice(text.as_bytes()),
                Stream::Stderr => {
                    // Keep the order between the two streams.
                    write_out(&mut buf);
                    write_to(Stream::Stderr, text.as_bytes());
                }
            }
        }
        if dropped > 0 {
            let text = format!("… {dropped} log lines dropped: the output could not keep up\n");
            write_to(Stream::Stderr, text.as_bytes());
        }
        write_out(&mut buf);
        if closed {
            *shared.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
            shared.finished.notify_all();
            return;
        }
        std::thread::sleep(BATCH);
    }
}

/// Whether stdout and stderr are the same file (a terminal, `2>&1`), or
/// that cannot be told.
fn same_file_behind_both() -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let id = |fd: std::os::fd::BorrowedFd<'_>| {
            let meta = std::fs::File::from(fd.try_clone_to_owned().ok()?).metadata().ok()?;
            Some((meta.dev(), meta.ino()))
        };
        match (id(std::io::stdout().as_fd()), id(std::io::stderr().as_fd())) {
            (Some(out), Some(err)) => out == err,
            _ => true,
        }
    }
    #[cfg(not(unix))]
    true
}

/// Writes and empties `buf` to stdout.
fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        write_to(Stream::Stdout, buf);
        buf.clear();
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
        assert!(printer.finish(Duration::from_secs(5)));
    }
}
