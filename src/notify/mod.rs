//! Status webhooks: signed, retried, logged notifications when tunnels and
//! tokens connect or disconnect (seeds 000 and 002).
//!
//! The pure parts ([`event`], [`sign`], [`retry`], [`ssrf`]) take values and
//! return decisions; the delivery machinery lives beside them and never runs on
//! a tunnel's path: sessions only hand an event to the outbox.

pub mod deliver;
pub mod event;
pub mod notifier;
pub mod retry;
pub mod sign;
pub mod ssrf;

pub use event::{EventKind, Payload};
pub use notifier::{Notifier, NotifyConfig};
