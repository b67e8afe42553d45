//! Stopping in two steps, as a person at a terminal expects: the first request
//! stops taking work and lets the work in flight finish (a drain, under a
//! deadline); a second one cuts the drain short.

use tokio_util::sync::CancellationToken;

/// A two-step stop shared by whoever serves and whoever asks it to stop.
/// Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    cut: CancellationToken,
}

impl Shutdown {
    /// Not stopping yet.
    pub fn new() -> Self {
        let cut = CancellationToken::new();
        // Cutting the drain short also stops, whichever is asked first.
        Self { stop: cut.child_token(), cut }
    }

    /// Stops: take no new work, let the work in flight finish (a drain).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops without waiting for the work in flight (ends a drain that has begun).
    pub fn cut(&self) {
        self.cut.cancel();
        self.stop.cancel();
    }

    /// Cancelled once stopping has been asked for (by [`stop`](Self::stop) or [`cut`](Self::cut)).
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Cancelled once the drain is to end at once.
    pub fn cut_token(&self) -> &CancellationToken {
        &self.cut
    }
}

/// A stop that only `token` asks for: its drain ends at its deadline, never sooner.
impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Self { stop: token, cut: CancellationToken::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[test]
    fn cut_also_stops() {
        let s = Shutdown::new();
        s.cut();
        assert!(s.stop_token().is_cancelled() && s.cut_token().is_cancelled());
        let s = Shutdown::new();
        s.stop();
        assert!(s.stop_token().is_cancelled() && !s.cut_token().is_cancelled());
    }
}
