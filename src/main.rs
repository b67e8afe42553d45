//! The `hookway` command: server, one-command tunnel, and API verbs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use hookway::client::api::clean_api_key;
use hookway::client::{self, ApiClient, ClientConfig, Event};
use hookway::error_chain;

/// `println!` for this binary and its `cli` modules (defined before them, so
/// theirs too): std's panics when stdout is a closed pipe (`hookway tunnels
/// list | head -1`); this one ends the process quietly, as `head` expects.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if crate::output::stuck(crate::output::Stream::Stdout) {
        } else if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            crate::stdout_failed(err);
        }
    }};
}

/// `eprintln!` likewise: a message that cannot reach a closed stderr is
/// lost, instead of panicking (std's would turn a clean exit into a crash).
/// Nothing is written to a stream the client's line writer was left stuck on.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if !crate::output::stuck(crate::output::Stream::Stderr) {
            let _ = writeln!(std::io::stderr(), $($arg)*);
        }
    }};
}

/// Fails the command with a [`Usage`] error: `format!` arguments.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new(crate::Usage(format!($($arg)*))))
    };
}

/// A command line that parsed but cannot be carried out as given: options
/// that do not combine, a value of a form clap does not check. It exits 2, as
/// clap's own usage errors do, so that a script tells a mistake in its
/// command from a failure of the command (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

#[path = "cli/inbound.rs"]
mod inbound_cli;
#[path = "cli/inspect.rs"]
mod inspect_cli;
#[path = "cli/monitor.rs"]
mod monitor_cli;
#[path = "cli/output.rs"]
mod output;
#[path = "cli/table.rs"]
mod table;
#[path = "cli/test_request.rs"]
mod test_request_cli;
#[path = "cli/tunnels.rs"]
mod tunnels_cli;
#[path = "cli/webhooks.rs"]
mod webhooks_cli;

use hookway::notify::NotifyConfig;
use hookway::notify::retry::Schedule;
use hookway::quic::close;
use hookway::server::capture::CaptureConfig;
use hookway::server::gateway::WsLimits;
use hookway::server::listener::{self, HttpLimits};
use hookway::server::{self, KeySource, Server, ServerConfig, TlsSource};
use hookway::shutdown::Shutdown;
use reqwest::Method;
use serde_json::{Value, json};

/// mimalloc (the default `mimalloc` feature): measured a quarter less CPU per
/// forwarded request in the client than glibc's malloc, and a tenth to a fifth
/// less in the server, where malloc and free were a tenth of all samples.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Commits mimalloc's arenas as they are used rather than when reserved. By
/// default Linux gets them committed at once, and with transparent huge pages
/// set to `always` (a common default) whole huge pages then become resident:
/// 1,000 idle tunnels measured 116 MiB RSS that way, 79 MiB this way.
///
/// It has to run before the first allocation reserves the first arena, and the
/// Rust runtime allocates before `main`: so it runs as an ELF initializer, as
/// the C constructors linked in do.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[used]
#[unsafe(link_section = ".init_array")]
static LAZY_ARENA_COMMIT: extern "C" fn() = {
    extern "C" fn lazy_arena_commit() {
        /// `mi_option_arena_eager_commit` in mimalloc.h (v3), which the `-sys`
        /// crate does not name.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        // SAFETY: stores a value in mimalloc's option table, nothing more.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
    lazy_arena_commit
};

#[derive(Parser)]
#[command(
    name = "hookway",
    version,
    about = "Give a local server a public URL so it can receive webhooks.",
    long_about = "hookway exposes a local HTTP server through a public URL, over one QUIC connection.\n\n\
        Run `hookway server` on a machine with a public address (or locally to try it), then\n\
        `hookway start 3000` where your app listens on port 3000: webhooks sent to the printed\n\
        URL reach your app."
)]
struct Cli {
    /// The client options, also accepted before the subcommand (`hookway --server … tunnels
    /// list`, `hookway tunnels --server … list`). They are clap globals: a value given at any
    /// level reaches the client command's own [`ClientArgs`], and this copy holds the one used.
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands that are not clients of a server's API, and so take no [`ClientArgs`].
const NOT_CLIENTS: [&str; 2] = ["server", "keys"];

/// `--help` shows an option's `[env: NAME=value]` only while `NAME` is set:
/// unset, clap would print `[env: NAME=]`, which reads as set to the empty
/// string. Secrets (`hide_env_values` already) never show their value.
fn env_shown_when_set(command: clap::Command) -> clap::Command {
    let command = command.mut_args(|arg| match arg.get_env() {
        Some(name) if std::env::var_os(name).is_none() => arg.hide_env_values(true),
        _ => arg,
    });
    let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    names.iter().fold(command, |command, name| command.mut_subcommand(name, env_shown_when_set))
}

/// Parses the command line. The client options are clap globals, which clap
/// copies into every subcommand: `server` and `keys` get hidden copies instead
/// (clap then skips them), so their `--help` does not list options they
/// ignore, and giving one of them there is a usage error.
fn parse() -> Cli {
    let client_args: Vec<clap::Arg> =
        ClientArgs::augment_args(clap::Command::new("client")).get_arguments().cloned().collect();
    let mut command = NOT_CLIENTS.iter().fold(env_shown_when_set(Cli::command()), |cmd, name| {
        cmd.mut_subcommand(name, |sub| sub.args(client_args.iter().map(|arg| arg.clone().global(false).hide(true))))
    });
    let matches = command.get_matches_mut();
    let not_client = matches.subcommand_name().filter(|name| NOT_CLIENTS.contains(name));
    if let Some(name) = not_client {
        let given = client_args
            .iter()
            .find(|arg| matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine));
        if let Some(arg) = given {
            let message = format!(
                "--{} is an option of the client commands (start, tunnels, webhooks), not of `{name}`",
                arg.get_long().unwrap_or_default()
            );
            command.error(clap::error::ErrorKind::UnknownArgument, message).exit();
        }
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    if not_client.is_none() {
        if let Err(why) = server_url(&cli.client.server) {
            let message = format!("invalid value '{}' for '--server <SERVER>': {why}", cli.client.server);
            command.error(clap::error::ErrorKind::ValueValidation, message).exit();
        }
        let option = match cli.client.server.as_str() {
            DEFAULT_SERVER => String::new(),
            url => format!(" --server {}", shell_word(url)),
        };
        let _ = SERVER_OPTION.set(option);
    }
    if let Some(message) = monitor_without_terminal(&cli.command) {
        command.error(clap::error::ErrorKind::ArgumentConflict, message).exit();
    }
    if let Command::Tunnels(TunnelsCommand::Connect(cmd) | TunnelsCommand::Monitor(cmd)) = &cli.command
        && let Err(message) = ws_url_agrees(cmd)
    {
        command.error(clap::error::ErrorKind::ArgumentConflict, message).exit();
    }
    cli
}

/// A `--ws-url` names a tunnel and carries its token: they must be the ones
/// the other arguments give, or which tunnel is served would be a guess.
fn ws_url_agrees(cmd: &ConnectCmd) -> Result<(), String> {
    let Some(url) = &cmd.ws_url else { return Ok(()) };
    if url.tunnel_id() != cmd.id {
        return Err(format!(
            "--ws-url is for tunnel {}, not {}: give the wsUrl of {}",
            url.tunnel_id(),
            cmd.id,
            cmd.id
        ));
    }
    match &cmd.token {
        Some(token) if token != url.token() => {
            Err("--token and the token in --ws-url differ: give one of them (the wsUrl carries the token)".into())
        }
        _ => Ok(()),
    }
}

/// Parses `--ws-url` (see [`client::WsUrl`]). Not a plain function parser:
/// clap would print the value, token and all, in its error.
#[derive(Clone)]
struct WsUrlParser;

impl clap::builder::TypedValueParser for WsUrlParser {
    type Value = client::WsUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let why = match value.to_str().map(str::parse::<client::WsUrl>) {
            Some(Ok(url)) => return Ok(url),
            Some(Err(err)) => err.to_string(),
            None => "not valid UTF-8".into(),
        };
        let message = format!("invalid value for '--ws-url <WS_URL>': {why}\n");
        Err(clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd))
    }
}

/// Why the monitor cannot run here, if it cannot: it draws on stdout and reads
/// keys from stdin, so both must be a terminal. Checked before anything else,
/// since it would otherwise fail only after creating a tunnel (`start`) or a
/// new token (`tunnels monitor`, which ends the client that served it).
fn monitor_without_terminal(command: &Command) -> Option<String> {
    use std::io::IsTerminal;
    if !monitors(command) || (std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return None;
    }
    let (what, instead) = match command {
        Command::Start(_) | Command::Tunnels(TunnelsCommand::Start(_)) => ("--monitor", "leave out --monitor"),
        _ => ("`tunnels monitor`", "use `tunnels connect`"),
    };
    Some(format!("{what} needs a terminal (stdin and stdout); without one, {instead} (add --json for scripts)"))
}

#[derive(Subcommand)]
enum Command {
    /// Run the tunnel server (HTTP edge + REST API on TCP, tunnel clients on QUIC/UDP).
    Server(ServerArgs),
    /// Create a tunnel and forward it to a local port, in one step.
    Start(StartArgs),
    /// Manage tunnels through the REST API.
    #[command(subcommand)]
    Tunnels(TunnelsCommand),
    /// Manage status webhooks: notifications when tunnels and tokens connect or disconnect.
    #[command(subcommand)]
    Webhooks(webhooks_cli::WebhooksCommand),
    /// Manage API keys directly in the server's data directory (run on the server machine).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Args)]
struct ServerArgs {
    /// TCP address for public HTTP traffic and the REST API.
    #[arg(long, env = "HOOKWAY_HTTP", default_value = "127.0.0.1:8080", value_parser = listen_addr)]
    http: SocketAddr,
    /// UDP address for tunnel clients (QUIC).
    #[arg(long, env = "HOOKWAY_QUIC", default_value = "127.0.0.1:4443", value_parser = listen_addr)]
    quic: SocketAddr,
    /// Where the database and the generated certificate live.
    #[arg(long, env = "HOOKWAY_DATA_DIR", default_value = "hookway-data")]
    data_dir: PathBuf,
    /// Public base URL of the HTTP listener, as callers reach it (default: http://<http addr>). It may
    /// have a path (https://example.com/hooks) for a reverse proxy that serves hookway under it:
    /// requests are routed with that path or without it, whether the proxy strips it or not.
    #[arg(long, env = "HOOKWAY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Domain for host-based URLs: <subdomain>.<domain> routes to that tunnel.
    #[arg(long, env = "HOOKWAY_DOMAIN")]
    domain: Option<String>,
    /// QUIC address clients should dial, HOST:PORT, if not <public host>:<quic port> (e.g. behind NAT).
    #[arg(long, env = "HOOKWAY_QUIC_PUBLIC_ADDR", value_parser = dial_addr)]
    quic_public_addr: Option<String>,
    /// Reverse proxies in front of the HTTP listener (addresses or CIDR ranges, comma-separated, e.g.
    /// 127.0.0.1,::1): for requests from them, the caller recorded (request inspection, a WebSocket
    /// client's clientIp, the client IP the tunnel client sees) is the last X-Forwarded-For address
    /// that is not one of them. Default: none, the connection's peer is the caller.
    #[arg(long, env = "HOOKWAY_TRUSTED_PROXIES")]
    trusted_proxies: Vec<hookway::server::proxies::TrustedProxies>,
    /// PEM certificate chain for QUIC; without it a self-signed one is generated and pinned by clients.
    #[arg(long, env = "HOOKWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "HOOKWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds to wait for the local app's response before answering 504 (or 408
    /// when the caller's body was what held it up); also how long an upload that
    /// goes on after the app's answer may wait on a silent caller.
    #[arg(long, env = "HOOKWAY_REQUEST_TIMEOUT", default_value_t = 30, value_parser = seconds())]
    request_timeout: u64,
    /// Seconds a caller may leave its answer unread (the edge's writes to it blocked) before its
    /// connection is closed: an unread answer holds the tunnel's flow-control window, or server memory.
    #[arg(long, env = "HOOKWAY_SEND_TIMEOUT", default_value_t = 30, value_parser = seconds())]
    send_timeout: u64,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "HOOKWAY_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
    /// Open HTTP connections at most (WebSocket tunnels included); more wait until one closes.
    /// Default: seven eighths of the open-file limit, which the server first raises to its maximum.
    #[arg(long, env = "HOOKWAY_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Open HTTP connections at most from one caller address (an IPv6 /64 counts as one); more are
    /// answered 429 and closed. Connections from --trusted-proxies are not limited.
    #[arg(long, env = "HOOKWAY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = listener::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_address: u32,
    /// Requests in flight at most from one caller address to one tunnel (an IPv6 /64 counts as one;
    /// behind --trusted-proxies, the caller their X-Forwarded-For names); more are answered 429.
    #[arg(long, env = "HOOKWAY_MAX_IN_FLIGHT_PER_CALLER", default_value_t = listener::DEFAULT_MAX_IN_FLIGHT_PER_CALLER, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight_per_caller: u32,
    /// Largest body (bytes) a WebSocket-JSON tunnel carries; larger requests get 413.
    #[arg(long, env = "HOOKWAY_WS_MAX_BODY", default_value_t = hookway::server::gateway::DEFAULT_MAX_BODY)]
    ws_max_body: usize,
    /// Seconds between the server's pings to WebSocket clients.
    #[arg(long, env = "HOOKWAY_WS_PING_INTERVAL", default_value_t = hookway::server::gateway::DEFAULT_PING_INTERVAL.as_secs(), value_parser = seconds())]
    ws_ping_interval: u64,
    /// Seconds a WebSocket client may stay silent (no message, no pong), or leave what the server
    /// writes unread, before it is dropped.
    #[arg(long, env = "HOOKWAY_WS_IDLE_TIMEOUT", default_value_t = hookway::server::gateway::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = seconds())]
    ws_idle_timeout: u64,
    /// Delays before each retry of a failed status-webhook delivery; its length is the number of
    /// retries (units ms, s, m, h; "" for none). Retried: 5xx, 429, timeouts, connection errors.
    #[arg(long, env = "HOOKWAY_WEBHOOK_RETRY_SCHEDULE", default_value = hookway::notify::retry::DEFAULT_SCHEDULE)]
    webhook_retry_schedule: String,
    /// Seconds allowed per webhook delivery attempt.
    #[arg(long, env = "HOOKWAY_WEBHOOK_TIMEOUT", default_value_t = hookway::notify::notifier::DEFAULT_ATTEMPT_TIMEOUT.as_secs(), value_parser = seconds())]
    webhook_timeout: u64,
    /// Allow webhook URLs on loopback, private and link-local addresses (refused by default so a
    /// webhook cannot reach the server's own network; needed when everything runs on one machine).
    #[arg(long, env = "HOOKWAY_ALLOW_PRIVATE_WEBHOOKS", value_parser = clap::builder::BoolishValueParser::new())]
    allow_private_webhooks: bool,
    /// Bytes kept of each captured request and response body for inspection (0 keeps none).
    #[arg(long, env = "HOOKWAY_CAPTURE_BODY_LIMIT", default_value_t = hookway::server::capture::DEFAULT_BODY_LIMIT)]
    capture_body_limit: usize,
    /// Body bytes captured per second over all tunnels (a second's worth may come at once). Past it,
    /// bodies are cut short and marked truncated, so that a flood of large bodies does not take the CPU
    /// forwarding needs to store what no one could read; every record is still kept. 0 keeps no bodies.
    #[arg(long, env = "HOOKWAY_CAPTURE_BODY_RATE", default_value_t = hookway::server::capture::DEFAULT_BODY_RATE)]
    capture_body_rate: usize,
    /// Captured requests kept per tunnel (the newest, 1 to 100000000); older ones are pruned.
    #[arg(long, env = "HOOKWAY_CAPTURE_MAX_RECORDS", default_value_t = hookway::server::capture::DEFAULT_MAX_RECORDS as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CAPTURE_RECORDS))]
    capture_max_records: u64,
    /// Also prune captured requests older than this (e.g. 24h, 7d; default: kept until pushed out by newer ones).
    #[arg(long, env = "HOOKWAY_CAPTURE_MAX_AGE", value_parser = hookway::notify::retry::parse_duration)]
    capture_max_age: Option<Duration>,
    /// Capture no requests at all: the inspection API and `tunnels monitor` then show nothing.
    #[arg(long, env = "HOOKWAY_NO_CAPTURE", value_parser = clap::builder::BoolishValueParser::new())]
    no_capture: bool,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Base URL of the hookway server (its --public-url, like http://127.0.0.1:8080).
    // Checked by `parse` for the client commands only: the server's own
    // commands must not fail on a client's `HOOKWAY_SERVER`.
    #[arg(long, env = "HOOKWAY_SERVER", default_value = DEFAULT_SERVER, global = true)]
    server: String,
    /// API key (printed by the server on its first start).
    #[arg(long, env = "HOOKWAY_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print machine-readable JSON instead of text (a failure too: `{"error": …}` on stderr).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Clone)]
struct ConnectArgs {
    /// Host of the local app. `localhost` reaches an app listening on 127.0.0.1 or on ::1 (tried in
    /// that order, without a lookup).
    #[arg(long, default_value = "localhost", value_parser = client::forward::local_host)]
    local_host: String,
    /// Pin this SHA-256 certificate fingerprint instead of the one the server announces.
    #[arg(long, env = "HOOKWAY_FINGERPRINT", value_parser = fingerprint)]
    fingerprint: Option<String>,
    /// QUIC address to dial instead of the one the server announces (HOST:PORT).
    #[arg(long, env = "HOOKWAY_QUIC_ADDR", value_parser = dial_addr)]
    quic_addr: Option<String>,
    /// Serve over the WebSocket-JSON gateway (TCP) instead of QUIC: for networks that block UDP.
    /// Bodies are then buffered and capped by the server (10 MiB by default).
    #[arg(long)]
    ws: bool,
    /// Microseconds (at most 1000000) to keep polling instead of sleeping when a request starts or ends,
    /// while no other is in flight. Saves the wake-ups that make most of a quiet tunnel's added latency
    /// (on VMs especially), for at most twice this in CPU per request; 0 turns it off. QUIC only.
    #[arg(
        long,
        env = "HOOKWAY_BUSY_POLL_US",
        default_value_t = hookway::client::spin::DEFAULT_BUDGET.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=1_000_000)
    )]
    busy_poll_us: u64,
}

#[derive(Args)]
struct StartArgs {
    /// Local port to expose.
    #[arg(value_parser = local_port)]
    port: u16,
    /// Tunnel name (default: "<local host>:<port>", like "localhost:3000").
    #[arg(long)]
    name: Option<String>,
    /// Custom subdomain (3-63 chars: lowercase letters, digits, hyphens; starts with a letter, not ending in a hyphen).
    /// If one of your tunnels has it already (an earlier `start`), the error says how to serve
    /// that one again (`tunnels connect`).
    #[arg(long)]
    subdomain: Option<String>,
    /// Group label of the new tunnel, for webhooks that subscribe to one group.
    #[arg(long)]
    group: Option<String>,
    /// Full-screen view of the requests (live list, details, replay) instead of a line per request.
    ///
    /// Keys: ↑/↓ or k/j select, Home/End newest/oldest, PgUp/PgDn scroll the detail, r replays the selected
    /// request, ? lists the keys, q/Esc/Ctrl-C quit. Needs a terminal (stdin and stdout).
    #[arg(long)]
    monitor: bool,
    #[command(flatten)]
    inbound: inbound_cli::InboundArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum TunnelsCommand {
    /// Create a tunnel and forward it to a local port, in one step (the same as `hookway start`).
    Start(StartArgs),
    /// List the organization's tunnels.
    List(ClientOnly),
    /// Show one tunnel.
    Get(IdArg),
    /// Create a tunnel (prints its auth token once).
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Custom subdomain (3-63 chars: lowercase letters, digits, hyphens; starts with a letter, not ending in a hyphen;
        /// unique on the server). Default: a generated one like cool-sunset-x7kf.
        #[arg(long)]
        subdomain: Option<String>,
        /// Group label, for webhooks that subscribe to one group.
        #[arg(long)]
        group: Option<String>,
        /// Keep only the method, path, headers and sizes of captured requests, not their bodies.
        #[arg(long)]
        no_capture_bodies: bool,
        #[command(flatten)]
        inbound: inbound_cli::InboundArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rename a tunnel, change its group, turn body capture on or off, or set or lift its basic auth,
    /// verification handshake, rate limit and offline reply.
    Update {
        /// Tunnel id.
        #[arg(value_parser = crate::resource_id)]
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New group label.
        #[arg(long, conflicts_with = "no_group")]
        group: Option<String>,
        /// Remove the tunnel from its group.
        #[arg(long)]
        no_group: bool,
        /// Capture request and response bodies again.
        #[arg(long, conflicts_with = "no_capture_bodies")]
        capture_bodies: bool,
        /// Stop capturing bodies (method, path, headers and sizes are still kept).
        #[arg(long)]
        no_capture_bodies: bool,
        #[command(flatten)]
        inbound: inbound_cli::InboundArgs,
        #[command(flatten)]
        inbound_off: inbound_cli::InboundOffArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a tunnel (ends its session).
    Delete(IdArg),
    /// Live status of a tunnel.
    Status(IdArg),
    /// Issue a new auth token; the old one stops working and its session ends.
    RegenerateToken(IdArg),
    /// End the tunnel's live session.
    Disconnect(IdArg),
    /// Send a test request to the tunnel's public URL, as a webhook sender would (through its
    /// inbound options, the client and the app), and print the answer; exits 1 unless your app
    /// answered it with a 2xx (not the server: an error, a handshake, an offline reply).
    Test(test_request_cli::TestArgs),
    /// Serve an existing tunnel from a local port.
    Connect(ConnectCmd),
    /// Serve an existing tunnel like `connect`, in a full-screen view of its requests (live list,
    /// details, replay).
    ///
    /// Keys: ↑/↓ or k/j select, Home/End newest/oldest, PgUp/PgDn scroll the detail, r replays the selected
    /// request, ? lists the keys, q/Esc/Ctrl-C quit. Needs a terminal (stdin and stdout).
    Monitor(ConnectCmd),
    #[command(flatten)]
    Inspect(inspect_cli::InspectCommand),
}

/// `tunnels connect` and `tunnels monitor`: one way to connect, two ways to show it.
#[derive(Args)]
struct ConnectCmd {
    /// Tunnel id.
    #[arg(value_parser = crate::resource_id)]
    id: String,
    /// Local port.
    #[arg(value_parser = local_port)]
    port: u16,
    /// The tunnel's auth token; without it a new one is issued (ending any other client's session).
    #[arg(long, env = "HOOKWAY_TUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The tunnel's wsUrl as the API printed it: serves over the WebSocket gateway (implies --ws) with
    /// the token it carries (no new token is issued; a --token must be the same).
    // Here, not in `ConnectArgs`: `start` creates its tunnel, and serves that one.
    #[arg(long, env = "HOOKWAY_WS_URL", hide_env_values = true, value_parser = WsUrlParser)]
    ws_url: Option<client::WsUrl>,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ClientOnly {
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct IdArg {
    /// Tunnel id (tun_…).
    #[arg(value_parser = crate::resource_id)]
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Where [`println`] goes when stdout fails: a reader that went away ends us
/// quietly (exit 0, like other filters' writers); anything else is reported.
fn stdout_failed(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {err}");
    std::process::exit(1);
}

/// A local port to forward to: 0 is not one (it means "any" only when binding).
/// A timeout or interval in whole seconds: at least 1 (0 would make every
/// request, ping or delivery fail at once) and at most a week (the server
/// adds them to the clock, which must not overflow).
fn seconds() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=hookway::server::listener::MAX_TIMEOUT.as_secs())
}

fn local_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port an app listens on; give the port of your local app (1-65535)".into()),
        Ok(port) => Ok(port),
        Err(_) => Err("a port is a number from 1 to 65535".into()),
    }
}

/// A `HOST:PORT` to dial (`[v6]:PORT` for an IPv6 address), kept as given:
/// without the port, clients only ever said they could not resolve it.
fn dial_addr(s: &str) -> Result<String, String> {
    let example = "give a host and port, like tunnels.example.com:4443, 203.0.113.7:4443 or [2001:db8::7]:4443";
    let Some((host, port)) = s.rsplit_once(':') else { return Err(format!("no port: {example}")) };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{port:?} is not a port: {example}"));
    }
    let bare_v6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || bare_v6 || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(example.into());
    }
    Ok(s.to_owned())
}

/// An address to listen on: `IP:PORT`, or `localhost:PORT` for 127.0.0.1
/// (the name `--server http://localhost:…` takes). Other names are refused
/// rather than looked up: which of its addresses a name would bind is
/// anyone's guess.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => port
            .parse::<u16>()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|_| format!("{port:?} is not a port")),
        Some((_, port)) if port.parse::<u16>().is_ok() => {
            Err("give an IP address and port, like 127.0.0.1:8080 (this machine only), 0.0.0.0:8080 (every IPv4 \
             address) or [::]:8080 (every address)"
                .into())
        }
        _ => Err("give an address and port, like 127.0.0.1:8080".into()),
    }
}

/// Checked before anything is created: a typo must not leave a tunnel behind.
fn fingerprint(s: &str) -> Result<String, String> {
    hookway::quic::tls::Trust::pinned(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}

/// The server's base URL. A tunnel's public URL (`…/t/name`) in its place would
/// send the API key through the tunnel to someone's app, and a bare
/// `host:port` would fail later with a cryptic URL error.
fn server_url(s: &str) -> Result<String, String> {
    const HINT: &str = "--server is the server's base URL, like http://127.0.0.1:8080";
    // (`127.0.0.1:8080` is no URL at all to the parser; `localhost:8080` one
    // of scheme `localhost`: either lacks the same thing.)
    if !s.contains("://") {
        return Err(format!("{HINT}: it starts with http:// or https://"));
    }
    let url = url::Url::parse(s).map_err(|e| format!("{HINT} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!("{HINT}: it starts with http:// or https://"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{HINT}, without a query or fragment"));
    }
    if url.path_segments().into_iter().flatten().any(|seg| seg == "t" || seg == "api") {
        return Err(format!("{HINT}: not a tunnel's public URL (…/t/<subdomain>) or an API path"));
    }
    Ok(s.to_owned())
}

/// The server clients talk to unless told otherwise: the server's default `--http`.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Most `--capture-max-records`: far more than anyone reads (each record may
/// hold 2 MiB of bodies), and well inside what SQLite counts in (a value past
/// `i64::MAX` once became a negative offset, which kept one record).
const MAX_CAPTURE_RECORDS: u64 = 100_000_000;

/// Checks an id argument (`tun_…`, `wh_…`, `req_…`) before it goes into a URL
/// path: ids are letters, digits, `_` and `-`, so a typo or a pasted path
/// (`../keys`, `x?y`) is an error here rather than a request to another route.
/// (Spaces around it, as a copy from a terminal may bring, are dropped.)
fn resource_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && hookway::wire::is_id(s.as_bytes()) {
        Ok(s.to_owned())
    } else {
        Err("not an id: ids are letters, digits, '_' and '-' (like tun_x3v10sgorhdgipbm or req_01a20d8b5945866f1903)"
            .into())
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key for an organization (created if new); the key is printed once.
    Create {
        /// Organization name (1 to 100 characters, shown in `keys list`).
        #[arg(long, default_value = server::DEFAULT_ORG, value_parser = org_name)]
        org: String,
        /// The server's data directory.
        #[arg(long, env = "HOOKWAY_DATA_DIR", default_value = "hookway-data")]
        data_dir: PathBuf,
    },
    /// List the API keys: id, organization, the key's first characters (never the key), creation time.
    List {
        /// The server's data directory.
        #[arg(long, env = "HOOKWAY_DATA_DIR", default_value = "hookway-data")]
        data_dir: PathBuf,
    },
    /// Delete an API key; a running server refuses it within 10 s. A server left without keys makes
    /// and prints a new one on its next start.
    Revoke {
        /// The key's id (`key_…`, from `keys list`).
        id: String,
        /// The server's data directory.
        #[arg(long, env = "HOOKWAY_DATA_DIR", default_value = "hookway-data")]
        data_dir: PathBuf,
    },
}

/// An organization's name for `keys create`: shown in `keys list`, so held
/// to what a tunnel's name is (an escape sequence in one cleared the screen,
/// found by an adversarial probe).
fn org_name(s: &str) -> Result<String, String> {
    hookway::shown_name(s, 100).map(str::to_owned).map_err(|why| format!("the name {why}"))
}

/// The store in the server's data directory `dir`; refused when it holds no
/// database, rather than making a new one no running server reads.
fn existing_store(dir: &std::path::Path) -> Result<hookway::store::StoreHandle> {
    if !hookway::store::SqliteStore::path_in(dir).is_file() {
        bail!("no hookway database in {}: pass the server's --data-dir (or set HOOKWAY_DATA_DIR)", dir.display());
    }
    Ok(hookway::store::StoreHandle::new(hookway::store::SqliteStore::open_in(dir)?))
}

/// `hookway keys …`: on the server's machine, against its data directory.
fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Create { org, data_dir } => {
            let key = server::create_api_key(&existing_store(&data_dir)?, &org)?;
            println!("{key}");
            eprintln!("API key for organization '{org}' (shown once; store it now).");
        }
        KeysCommand::List { data_dir } => {
            let listed = existing_store(&data_dir)?.blocking().list_api_keys()?;
            let rows: Vec<Vec<String>> = listed
                .into_iter()
                .map(|k| {
                    let key = match k.prefix.as_str() {
                        hookway::store::ENV_KEY_PREFIX => "(HOOKWAY_API_KEY)".to_owned(),
                        prefix => format!("{prefix}…"),
                    };
                    // (Local time, as every other table of the CLI.)
                    vec![k.id, k.org, key, inspect_cli::records::local_time_s(&k.created_at)]
                })
                .collect();
            use table::Align::Left;
            let columns = [("ID", Left), ("ORG", Left), ("KEY", Left), ("CREATED", Left)];
            for line in table::render(&columns, &rows, None) {
                println!("{line}");
            }
        }
        KeysCommand::Revoke { id, data_dir } => {
            if !existing_store(&data_dir)?.blocking().delete_api_key(&id)? {
                bail!(
                    "no API key {id} (see `{} keys list --data-dir {}`)",
                    own_command(),
                    shell_word(&data_dir.display().to_string())
                );
            }
            eprintln!("Revoked {id}: a running server refuses it within {} s.", server::KEY_RECHECK.as_secs());
        }
    }
    Ok(())
}

/// Prints errors as one readable chain (`a: b: c`), never a backtrace: they are
/// messages for the user, not crashes.
fn main() -> std::process::ExitCode {
    unset_empty_settings();
    let cli = parse();
    let json = cli.client.json;
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", error_line(&err, json));
            if err.downcast_ref::<Usage>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Takes empty `HOOKWAY_*` variables for unset, as a compose file's `${VAR}`
/// of an unset `VAR` makes them: `HOOKWAY_DOMAIN=` was an invalid domain and
/// `HOOKWAY_REQUEST_TIMEOUT=` an invalid number, naming the flag, not the
/// variable. (Not `HOOKWAY_API_KEY`: an empty key is said to be empty, since
/// a client given none may be one that was meant to have one.)
fn unset_empty_settings() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(name, value)| {
            value.is_empty()
                && name.to_str().is_some_and(|name| name.starts_with("HOOKWAY_") && name != "HOOKWAY_API_KEY")
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        // SAFETY: the first thing `main` does, while this is the only thread
        // (mimalloc's initializer before it starts none).
        unsafe { std::env::remove_var(name) };
    }
}

/// What a failure prints on stderr: `Error: a: b: c`, or with `--json`, for
/// scripts, `{"error": "a: b: c"}` with the HTTP `status` when the API refused.
fn error_line(err: &anyhow::Error, json: bool) -> String {
    // Not anyhow's `{:#}`: it would repeat causes already in a message.
    let message = error_chain(err.as_ref());
    if !json {
        return format!("Error: {message}");
    }
    // A hint on lines of its own (how to serve a tunnel again) is its own
    // field: `error` stays the one-line message.
    let mut line = match message.split_once('\n') {
        Some((first, hint)) => json!({ "error": first, "hint": hint.trim() }),
        None => json!({ "error": message }),
    };
    if let Some(client::ApiError::Status { status, .. }) = err.chain().find_map(|e| e.downcast_ref()) {
        line["status"] = json!(status);
    }
    line.to_string()
}

fn real_main(cli: Cli) -> Result<()> {
    // Before the runtime: the local offset can only be read while one thread runs.
    inspect_cli::records::init_local_offset();
    let default_level = if matches!(cli.command, Command::Server(_)) { "hookway=info" } else { "hookway=warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(log_writer(&cli.command))
        // Colours only for a person at a terminal: not in a log file, a pipe
        // or the monitor's own screen.
        .with_ansi(!monitors(&cli.command) && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log that cannot be written is lost, not reported: the report is an
        // `eprintln!` to the same broken stderr, which panics the task that
        // logged (a server whose log pipe closed never heard its SIGTERM).
        .log_internal_errors(false)
        .init();
    // The server serves many tunnels and callers: one worker per core. A client
    // serves one tunnel; on one thread its request path never pays a cross-thread
    // wake-up, which is a large part of a tunnel's added latency.
    let runtime = match cli.command {
        Command::Server(_) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(run(cli.command))
}

/// Whether the command draws the full-screen monitor.
fn monitors(command: &Command) -> bool {
    matches!(
        command,
        Command::Start(StartArgs { monitor: true, .. })
            | Command::Tunnels(TunnelsCommand::Start(StartArgs { monitor: true, .. }) | TunnelsCommand::Monitor(_))
    )
}

/// Where logs go: stderr, except under the monitor, which owns the terminal
/// and shows the last one in its header.
fn log_writer(command: &Command) -> tracing_subscriber::fmt::writer::BoxMakeWriter {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    if monitors(command) { BoxMakeWriter::new(monitor_cli::UiLog) } else { BoxMakeWriter::new(std::io::stderr) }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Server(args) => run_server(args).await,
        Command::Start(args) => start(args).await,
        Command::Tunnels(cmd) => tunnels(cmd).await,
        Command::Webhooks(cmd) => webhooks_cli::run(cmd).await,
        Command::Keys(cmd) => keys(cmd),
    }
}

/// Stops on ctrl-c, SIGTERM or SIGHUP, and cuts the drain short on a second
/// ctrl-c or SIGTERM. SIGHUP is what a closed terminal or ssh session sends
/// (often twice): it stops as gracefully as the others (it killed the process
/// at once, its callers left hanging until the server noticed the client
/// gone), and never hurries a stop.
///
/// The handlers are registered before this returns, so a caller that says it
/// is ready afterwards (the server's banner) is already safe to stop: a
/// SIGTERM sent by a supervisor or a script as soon as the banner appears
/// shuts down gracefully instead of killing the process.
fn shutdown_on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Under `nohup` (SIGHUP ignored) a closed terminal must not stop us:
        // a handler would take the place of that ignoring.
        let hangup = (!hangup_ignored()).then(|| signal(SignalKind::hangup()));
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), hangup.transpose());
        tokio::spawn(async move {
            match handlers {
                (Ok(mut term), Ok(mut int), Ok(mut hup)) => {
                    let mut stopping = false;
                    loop {
                        let hup = async {
                            match &mut hup {
                                Some(hup) => hup.recv().await,
                                None => std::future::pending().await,
                            }
                        };
                        let name = tokio::select! {
                            _ = term.recv() => "SIGTERM",
                            _ = int.recv() => "SIGINT",
                            _ = hup => "SIGHUP",
                        };
                        // A closed ssh session often sends SIGHUP twice (the
                        // shell's, then the kernel's as the shell exits): a
                        // second one is no one asking to hurry.
                        if stopping && name == "SIGHUP" {
                            continue;
                        }
                        // The server's log says why it is stopping (clients say so on their own).
                        // Acted on before it is logged: the log may be a closed pipe.
                        if stopping {
                            s.cut();
                            tracing::info!(signal = name, "stopping now");
                            break;
                        }
                        stopping = true;
                        s.stop();
                        tracing::info!(signal = name, "stopping (a second signal stops at once)");
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    s.stop();
                    let _ = tokio::signal::ctrl_c().await;
                    s.cut();
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.stop();
        let _ = tokio::signal::ctrl_c().await;
        s.cut();
    });
    shutdown
}

/// Whether SIGHUP is ignored, as `nohup` leaves it for the program it runs.
#[cfg(unix)]
fn hangup_ignored() -> bool {
    // SAFETY: a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

async fn run_server(args: ServerArgs) -> Result<()> {
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => TlsSource::Files { cert, key },
        _ => TlsSource::SelfSigned,
    };
    if args.ws_idle_timeout <= args.ws_ping_interval {
        usage!(
            "--ws-idle-timeout ({}s) must be longer than --ws-ping-interval ({}s), or every WebSocket client is dropped",
            args.ws_idle_timeout,
            args.ws_ping_interval
        );
    }
    let config = ServerConfig {
        http_addr: args.http,
        quic_addr: args.quic,
        data_dir: args.data_dir.clone(),
        public_url: args.public_url,
        domain: args.domain,
        quic_public_addr: args.quic_public_addr,
        tls,
        request_timeout: Duration::from_secs(args.request_timeout),
        trusted_proxies: hookway::server::proxies::TrustedProxies::merged(args.trusted_proxies),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        api_key: match std::env::var("HOOKWAY_API_KEY").ok().filter(|k| !k.trim().is_empty()) {
            // A key no client could send would lock every client out.
            Some(key) => Some(clean_api_key(&key).map_err(|why| anyhow!("HOOKWAY_API_KEY: {why}"))?.to_owned()),
            None => None,
        },
        http: HttpLimits {
            max_connections: {
                // Raised either way: a limit given by hand still needs the descriptors.
                let nofile = raise_open_file_limit();
                args.max_connections.map_or_else(|| listener::max_connections_for(nofile), |n| n as usize)
            },
            max_connections_per_address: args.max_connections_per_address as usize,
            max_in_flight_per_caller: args.max_in_flight_per_caller,
            send_timeout: Duration::from_secs(args.send_timeout),
            ..HttpLimits::default()
        },
        ws: WsLimits {
            max_body: args.ws_max_body,
            ping_interval: Duration::from_secs(args.ws_ping_interval),
            idle_timeout: Duration::from_secs(args.ws_idle_timeout),
        },
        webhooks: NotifyConfig {
            schedule: match Schedule::parse(&args.webhook_retry_schedule) {
                Ok(schedule) => schedule,
                Err(e) => usage!("--webhook-retry-schedule: {e}"),
            },
            attempt_timeout: Duration::from_secs(args.webhook_timeout),
            allow_private: args.allow_private_webhooks,
        },
        capture: CaptureConfig {
            enabled: !args.no_capture,
            body_limit: args.capture_body_limit,
            body_rate: args.capture_body_rate,
            // (In range: checked by clap.)
            max_records: usize::try_from(args.capture_max_records).unwrap_or(usize::MAX),
            max_age: args.capture_max_age,
        },
        data_dir_check: hookway::server::DEFAULT_DATA_DIR_CHECK,
    };
    let server = Server::bind(config).await.context("cannot start the server")?;
    let shutdown = shutdown_on_signal();
    // One write, and a closed stdout does not stop the server (the binary's
    // `println!` would end the process, as suits a listing piped to `head`).
    let banner = banner(&server, &args.data_dir);
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    server.run(shutdown).await.context("the server stopped")?;
    Ok(())
}

/// Raises the soft limit of open files to the hard one (Linux's default soft
/// limit, 1024, is far below what a busy edge holds) and returns the limit in
/// force.
fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open-file limit");
            limit
        }
        Err(err) => {
            // (Only Unix has the limit, and only there can raising it fail.)
            #[cfg(unix)]
            let limit = rlimit::Resource::NOFILE.get().map_or(1024, |(soft, _)| soft);
            #[cfg(not(unix))]
            let limit = 1024;
            tracing::warn!(%err, limit, "cannot raise the open-file limit");
            limit
        }
    }
}

/// What the server prints once it listens: where, with what certificate, and
/// the command that exposes a port (with the key, on the first start).
fn banner(server: &Server, data_dir: &std::path::Path) -> String {
    let mut text = format!("hookway server {}\n", env!("CARGO_PKG_VERSION"));
    // (Under the public URL's path, if it has one.)
    let url = server.public_url();
    let prefix = url.parse::<http::Uri>().map(|u| u.path().trim_end_matches('/').to_owned()).unwrap_or_default();
    text += &format!("  Public URL:    {url}   (tunnels at {prefix}/t/<subdomain>, API at {prefix}/api)\n");
    if let Some(hosts) = server.host_url_pattern() {
        text += &format!("  Host URLs:     {hosts}\n");
    }
    text += &format!("  HTTP listen:   {}\n", server.http_addr());
    text += &format!("  QUIC listen:   udp {}\n", server.quic_addr());
    text += &match server.fingerprint() {
        Some(fp) => format!("  Certificate:   self-signed, SHA-256 {fp} (clients pin it through /api/info)\n"),
        None => "  Certificate:   from --tls-cert (clients verify it against system roots)\n".to_owned(),
    };
    // Where it is, whatever directory the next command runs in.
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    text += &format!("  Data:          {}\n", data_dir.display());
    if !server.captures() {
        text +=
            "  Capture:       off (--no-capture): requests are not recorded, so none can be inspected or replayed\n";
    }
    // Clients default to the default address; any other must be passed on.
    let server_env = match server.public_url() {
        DEFAULT_SERVER => String::new(),
        url => format!("HOOKWAY_SERVER={} ", shell_word(url)),
    };
    let me = own_command();
    let expose = |key: &str| format!("\n  Expose a local port:  {server_env}HOOKWAY_API_KEY={key} {me} start 3000\n");
    match server.key_source() {
        KeySource::Generated(key) => {
            text += &format!("\n  API key (shown only this once; store it now): {key}\n");
            text += &expose(key);
        }
        KeySource::Environment { retired } => {
            text += "\n  API key:       the HOOKWAY_API_KEY in this server's environment\n";
            if *retired > 0 {
                text += "                 (it changed: the key it set before no longer works)\n";
            }
            text += &expose("<that key>");
        }
        KeySource::Existing => {
            text += &expose("<your key>");
            text += &format!(
                "  (The key the first start printed, or the last HOOKWAY_API_KEY a start had; \
                 `{me} keys create --data-dir {}` makes another.)\n",
                shell_word(&data_dir.display().to_string())
            );
        }
    }
    text + "\n"
}

/// How to run this binary from the current directory, for the commands the
/// server's banner suggests: `hookway` when that name on the `PATH` is this
/// binary, else its path (`./target/release/hookway` after `cargo run
/// --release` here), so the suggestion works as printed.
fn own_command() -> String {
    let name = format!("hookway{}", std::env::consts::EXE_SUFFIX);
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else { return "hookway".into() };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join(&name).canonicalize().is_ok_and(|p| p == exe)) {
        return "hookway".into();
    }
    let here = std::env::current_dir().and_then(|d| d.canonicalize());
    let shown = match here.ok().and_then(|here| exe.strip_prefix(here).ok().map(|rel| rel.to_path_buf())) {
        Some(rel) => format!(".{}{}", std::path::MAIN_SEPARATOR, rel.display()),
        None => exe.display().to_string(),
    };
    if shown.contains(char::is_whitespace) { format!("'{shown}'") } else { shown }
}

/// What the commands this CLI suggests add to reach the server it was told
/// to use: ` --server URL`, unless it is the default. Set once, for the client
/// commands: a server given as a one-off `HOOKWAY_SERVER=…` prefix, as the
/// server's banner suggests, is gone when the suggestion is run.
static SERVER_OPTION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// [`SERVER_OPTION`], for the end of a suggested client command.
fn server_option() -> &'static str {
    SERVER_OPTION.get().map_or("", String::as_str)
}

/// `s` as one word of a shell command: as it is when it holds nothing a shell
/// reads specially, else single-quoted (`[::1]` is a glob to zsh).
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(plain) { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

fn api(client: &ClientArgs) -> Result<ApiClient> {
    match client.key() {
        Some(key) => {
            let key = clean_api_key(&key).map_err(|why| anyhow!("{why} (check --api-key or HOOKWAY_API_KEY)"))?;
            Ok(ApiClient::new(&client.server, Some(key.to_owned())))
        }
        None if client.api_key.is_some() => bail!("no API key: HOOKWAY_API_KEY (or --api-key) is set but empty"),
        None => bail!("no API key: pass --api-key or set HOOKWAY_API_KEY (the server prints one on its first start)"),
    }
}

impl ConnectArgs {
    /// What a suggested `tunnels connect` must repeat to serve a tunnel the
    /// same way: the server, and a pinned fingerprint above all (left out,
    /// the next run would trust whatever the server announces).
    fn same_way(&self) -> String {
        let mut options = server_option().to_owned();
        if let Some(fingerprint) = &self.fingerprint {
            options += &format!(" --fingerprint {fingerprint}");
        }
        if self.local_host != "localhost" {
            options += &format!(" --local-host {}", shell_word(&self.local_host));
        }
        if self.ws {
            options += " --ws";
        } else if let Some(addr) = &self.quic_addr {
            options += &format!(" --quic-addr {}", shell_word(addr));
        }
        options
    }
}

impl ClientArgs {
    /// The API key, if one was given: an empty one (`HOOKWAY_API_KEY=`) is
    /// none, so commands that need no key (`tunnels connect --token`) still run.
    fn key(&self) -> Option<String> {
        // Without the blanks around it, as `api` sends it (see `clean_api_key`).
        self.api_key.as_deref().map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned)
    }
}

async fn start(args: StartArgs) -> Result<()> {
    let api = api(&args.client)?;
    if args.monitor && args.client.json {
        usage!("--monitor shows a full-screen view: it does not combine with --json");
    }
    // (Cut to the API's 200 characters: a long `--local-host` is no reason to fail.)
    let name = args
        .name
        .unwrap_or_else(|| client::forward::authority(&args.connect.local_host, args.port).chars().take(200).collect());
    let quiet = args.client.json || args.monitor;
    // What the hints below must repeat to serve the tunnel the same way.
    let same_way = args.connect.same_way();
    let inbound = args.inbound.fields();
    let (id, token, ws_url) =
        match api.create_tunnel_in(&name, args.subdomain.as_deref(), args.group.as_deref(), inbound).await {
            Ok(created) => {
                if !quiet {
                    println!("Created tunnel {} ({})", created.tunnel.id, created.tunnel.name);
                    if let Some(options) = args.inbound.summary() {
                        println!("  Inbound:     {options}");
                    }
                }
                // Over the server URL this client was given, as QUIC is dialled:
                // the API's `wsUrl` is made of the public URL, which may be
                // another way in (a proxy's) than the one that works from here.
                let ws_url =
                    ws_url_for(&args.client.server, &created.tunnel.subdomain, &created.tunnel.id, &created.auth_token);
                (created.tunnel.id, created.auth_token, ws_url)
            }
            // Running the same `start --subdomain` again: say which tunnel has the
            // name and how to serve it. Not done here on our own: a new token would
            // end a client of it that is only reconnecting (a server restart, a
            // network change), for good.
            Err(client::ApiError::Status { status: 409, message }) if args.subdomain.is_some() => {
                let subdomain = args.subdomain.as_deref().unwrap_or_default();
                bail!("{}", taken_subdomain(&api, subdomain, args.port, &same_way, &message).await?);
            }
            Err(err) => return Err(err.into()),
        };
    let ws_url = match args.connect.ws.then(|| ws_url.and_then(|url| parse_ws_url(&url))).transpose() {
        Ok(ws_url) => ws_url,
        Err(err) => {
            forget_unserved(&api, &id, args.client.json).await;
            return Err(err);
        }
    };
    let (served, connected) =
        serve(&args.client, args.connect, ws_url, id.clone(), token, args.port, args.monitor).await;
    if !connected {
        // It never served (a wrong fingerprint, an unreachable QUIC port, a
        // ctrl-c while retrying): each failed try would leave a tunnel behind.
        // (Under `--monitor` it counts as served: the monitor says itself.)
        forget_unserved(&api, &id, args.client.json).await;
    } else if served.is_ok() {
        // Stopped here (ctrl-c, or q in the monitor, once its screen is
        // gone); an end the server chose says what to do. With --json, as a
        // failure's hint is: a field of a JSON line on stderr.
        let hint =
            format!("To serve the same URL again: {} tunnels connect {id} {}{same_way}", own_command(), args.port);
        if args.client.json {
            eprintln!("{}", json!({ "hint": hint }));
        } else {
            eprintln!("{hint}");
        }
    }
    served
}

/// Deletes a tunnel `start` created that no client ever served, saying so;
/// briefly, since the server may be what could not be reached. With `json`,
/// as a JSON line on stderr, as the failure that follows it.
async fn forget_unserved(api: &ApiClient, id: &str, json: bool) {
    let path = format!("/api/tunnels/{id}");
    let delete = api.call(Method::DELETE, &path, None);
    let failed = match tokio::time::timeout(Duration::from_secs(5), delete).await {
        Ok(Ok(_)) if json => return eprintln!("{}", json!({ "deleted": id, "reason": "never connected" })),
        Ok(Ok(_)) => return eprintln!("Deleted tunnel {id}: it was never connected."),
        Ok(Err(err)) => err.to_string(),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    let command = format!("{} tunnels delete {id}{}", own_command(), server_option());
    if json {
        eprintln!("{}", json!({ "notDeleted": id, "reason": "never connected", "error": failed, "hint": command }));
    } else {
        eprintln!("Tunnel {id} was never connected, and deleting it failed ({failed}): `{command}`");
    }
}

/// Why `subdomain` cannot be had, and what to do: serve this organization's
/// tunnel on it with `tunnels connect`, or pick another name.
async fn taken_subdomain(
    api: &ApiClient,
    subdomain: &str,
    port: u16,
    same_way: &str,
    conflict: &str,
) -> Result<String> {
    let listed = api.list("/api/tunnels", "tunnels").await?;
    let Some(t) = listed["tunnels"].as_array().into_iter().flatten().find(|t| t["subdomain"] == subdomain) else {
        return Ok(format!("{conflict}: another organization has it; pick another --subdomain"));
    };
    let id = t["id"].as_str().unwrap_or_default();
    Ok(if t["status"] == "connected" {
        format!("subdomain '{subdomain}' is your tunnel {id}, served right now by a client; stop that one first")
    } else {
        format!(
            "subdomain '{subdomain}' is your tunnel {id} from before: serve it again at the same URL with \
             `{} tunnels connect {id} {port}{same_way}` (a new token: a client of it still reconnecting stops)",
            own_command()
        )
    })
}

/// Serves the tunnel: with a line per event, or under the monitor (`monitor`).
/// Also says whether it ever connected (the monitor counts as connected).
async fn serve(
    client: &ClientArgs,
    connect: ConnectArgs,
    ws_url: Option<client::WsUrl>,
    id: String,
    token: String,
    port: u16,
    monitor: bool,
) -> (Result<()>, bool) {
    let same_way = connect.same_way();
    let config = ClientConfig {
        ws_url,
        server: client.server.clone(),
        tunnel_id: id.clone(),
        token,
        local_host: connect.local_host.clone(),
        local_port: port,
        fingerprint: connect.fingerprint,
        quic_addr: connect.quic_addr,
        busy_poll: Duration::from_micros(connect.busy_poll_us),
    };
    if monitor {
        return (monitor_cli::run(&client.server, client.key(), config).await, true);
    }
    let json = client.json;
    let mut local = format!("http://{}", client::forward::authority(&connect.local_host, port));
    if config.ws_url.is_some() {
        // Said, so a slower or buffered tunnel is not a mystery (bodies are
        // carried whole over WebSocket).
        local += " (over the WebSocket gateway)";
    }
    let printer = output::Printer::spawn();
    let lines = printer.lines();
    let connected = Arc::new(AtomicBool::new(false));
    let served = connected.clone();
    let on_event = move |event: Event| {
        if matches!(event, Event::Connected { .. }) {
            served.store(true, Ordering::Relaxed);
        }
        let (stream, text) = render_event(&event, json, &local);
        lines.send(stream, text);
    };
    let ended = client::run(config, on_event, shutdown_on_signal()).await;
    // The last lines go the way the others went, through the writer: a stdout
    // closed by its reader then costs only them (not the error and hint that
    // follow on stderr, nor the exit status), and one nobody reads holds the
    // stop up for at most OUTPUT_GRACE.
    let last = printer.lines();
    let result = match ended {
        Ok(()) => {
            if json {
                last.send(output::Stream::Stdout, format!("{}\n", json!({ "event": "stopped" })));
            } else {
                last.send(output::Stream::Stderr, "Tunnel stopped.\n".to_owned());
            }
            Ok(())
        }
        Err(err) => {
            if json {
                last.send(
                    output::Stream::Stdout,
                    format!("{}\n", json!({ "event": "ended", "reason": err.to_string() })),
                );
            }
            // Ended on purpose, but the tunnel is still there to be served
            // (a token refused: regenerated while this client was away).
            let again = matches!(&err, client::ClientError::Ended(why)
                if [close::TOKEN_REVOKED, close::DISCONNECTED].iter().any(|&c| why == close::describe(c)))
                || matches!(err, client::ClientError::TokenRefused(_));
            if again {
                Err(anyhow::anyhow!(
                    "{err}\nTo serve it again (with a new token, through your API key): {} tunnels connect {id} \
                     {port}{same_way}",
                    own_command()
                ))
            } else {
                Err(anyhow::anyhow!("{err}"))
            }
        }
    };
    printer.finish(OUTPUT_GRACE);
    (result, connected.load(Ordering::Relaxed))
}

/// Longest a stopping client waits for its lines to be written: output
/// nobody reads (a full pipe, a terminal paused with ctrl-s) must not keep it
/// from stopping. What is still unwritten then is lost.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A forwarded request as a `--json` line. Borrowed and serialized directly:
/// this runs once per request, and building a `serde_json::Value` for it was
/// 4% of a busy client's CPU. `event` first, as in every other event line.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestLine<'a> {
    event: &'static str,
    request_id: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: Option<u16>,
    duration_ms: f64,
    error: Option<&'a str>,
}

impl RequestLine<'_> {
    fn render(log: &client::RequestLog) -> String {
        let line = RequestLine {
            // Microseconds are what a clock on this path can tell apart; more
            // digits printed float noise (1.3371979999999999).
            duration_ms: log.duration.as_micros() as f64 / 1000.0,
            error: log.error.as_deref(),
            event: "request",
            request_id: log.id.as_deref(),
            method: &log.method,
            path: &log.path,
            status: log.status,
        };
        // Strings, numbers and options: serializing cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// The most of a request's path its line shows: the id after it stays in
/// reach, and `tunnels request` shows the path whole.
const LINE_PATH_MAX: usize = 60;

/// The text an event prints (with its newlines), and where it goes.
fn render_event(event: &Event, json: bool, local: &str) -> (output::Stream, String) {
    use output::Stream::{Stderr, Stdout};
    let text = match (event, json) {
        (Event::Connected { hello, reconnected }, true) => json!({
            "event": if *reconnected { "reconnected" } else { "connected" }, "tunnelId": hello.tunnel_id,
            "subdomain": hello.subdomain, "tunnelUrl": hello.tunnel_url, "hostUrl": hello.host_url
        })
        .to_string(),
        (Event::Connected { hello, reconnected: true }, false) => match &hello.host_url {
            Some(host) => format!("Reconnected: {} (and {host}) → {local}", hello.tunnel_url),
            None => format!("Reconnected: {} → {local}", hello.tunnel_url),
        },
        (Event::Connected { hello, .. }, false) => {
            let mut text = format!("Tunnel is live. Forwarding to {local}\n  Public URL:  {}\n", hello.tunnel_url);
            if let Some(host) = &hello.host_url {
                text.push_str(&format!("  Host URL:    {host}\n"));
            }
            text.push_str("Press ctrl-c to stop.\n");
            text
        }
        (Event::Request(log), true) => RequestLine::render(log),
        (Event::Request(log), false) => {
            let status = log.status.map_or_else(|| "ERR".to_string(), |s| s.to_string());
            let ms = log.duration.as_secs_f64() * 1000.0;
            // A caller's path, cut (the record keeps it whole) and made safe
            // to print: a C1 control in it could drive the terminal.
            let path = inspect_cli::records::fit(&inspect_cli::records::clean(&log.path), LINE_PATH_MAX);
            let mut line = format!("{:<7} {path:<40} {status}  {ms:.1}ms", log.method);
            // The record's id, to look the request up or replay it.
            for extra in [&log.id, &log.error].into_iter().flatten() {
                line.push_str("  ");
                line.push_str(extra);
            }
            line
        }
        (Event::Reconnecting { reason, retry_in, .. }, true) => {
            json!({ "event": "reconnecting", "reason": reason, "retryInMs": retry_in.as_millis() as u64 }).to_string()
        }
        (Event::Reconnecting { reason, retry_in, was_connected, lost }, false) => {
            let what = match (lost, was_connected) {
                (true, _) => "Connection lost",
                (false, true) => "Still cannot reconnect",
                (false, false) => "Cannot connect yet",
            };
            let text = format!("{what} ({reason}); retrying in {:.1}s…\n", retry_in.as_secs_f64());
            return (Stderr, text);
        }
        (Event::SlowConnect { to, waited }, true) => {
            json!({ "event": "slowConnect", "quicAddr": to, "waitedMs": waited.as_millis() as u64 }).to_string()
        }
        (Event::SlowConnect { to, waited }, false) => {
            let text = format!(
                "Still connecting over QUIC (UDP) to {to} after {}s; if this network blocks UDP, --ws tunnels over \
                 the server's HTTP port instead.\n",
                waited.as_secs()
            );
            return (Stderr, text);
        }
        (Event::Stopping { in_flight }, true) => json!({ "event": "stopping", "inFlight": in_flight }).to_string(),
        (Event::Stopping { in_flight }, false) => {
            let text = format!(
                "Stopping: {in_flight} request(s) in flight get up to {}s to finish (ctrl-c again to quit now)…\n",
                client::DRAIN.as_secs()
            );
            return (Stderr, text);
        }
    };
    (Stdout, text + "\n")
}

async fn tunnels(cmd: TunnelsCommand) -> Result<()> {
    match cmd {
        TunnelsCommand::Start(args) => start(args).await?,
        TunnelsCommand::List(ClientOnly { client }) => {
            let v = api(&client)?.list("/api/tunnels", "tunnels").await?;
            if client.json {
                println!("{v}");
            } else {
                let lines = tunnels_cli::list_lines(&v);
                if lines.is_empty() {
                    eprintln!(
                        "No tunnels yet: `{} start <port>{}` creates one and serves it.",
                        own_command(),
                        server_option()
                    );
                    return Ok(());
                }
                for line in lines {
                    println!("{line}");
                }
            }
        }
        TunnelsCommand::Get(IdArg { id, client }) => {
            show(&client, Method::GET, &format!("/api/tunnels/{id}"), None, tunnel_lines(&client)).await?;
        }
        TunnelsCommand::Create { name, subdomain, group, no_capture_bodies, inbound, client } => {
            let mut body = json!({ "name": name });
            if let Some(s) = subdomain {
                body["subdomain"] = Value::String(s);
            }
            if let Some(g) = group {
                body["group"] = Value::String(g);
            }
            if no_capture_bodies {
                body["captureBodies"] = Value::Bool(false);
            }
            if let Value::Object(body) = &mut body {
                body.extend(inbound.fields());
            }
            let v = show(&client, Method::POST, "/api/tunnels", Some(&body), tunnel_lines(&client)).await?;
            if !client.json {
                token_reminder(&v);
            }
        }
        TunnelsCommand::Update {
            id,
            name,
            group,
            no_group,
            capture_bodies,
            no_capture_bodies,
            inbound,
            inbound_off,
            client,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(name) = name {
                body.insert("name".into(), Value::String(name));
            }
            if let Some(group) = group {
                body.insert("group".into(), Value::String(group));
            } else if no_group {
                body.insert("group".into(), Value::Null);
            }
            if capture_bodies || no_capture_bodies {
                body.insert("captureBodies".into(), Value::Bool(capture_bodies));
            }
            body.extend(inbound.fields());
            inbound_off.add_to(&mut body);
            if body.is_empty() {
                usage!(
                    "nothing to update: pass --name, --group, --no-group, --capture-bodies, --no-capture-bodies, \
                     --basic-auth, --no-basic-auth, --verify, --no-verify, --rate-limit, --no-rate-limit, \
                     --offline-reply or --no-offline-reply"
                );
            }
            let body = Value::Object(body);
            show(&client, Method::PATCH, &format!("/api/tunnels/{id}"), Some(&body), tunnel_lines(&client)).await?;
        }
        TunnelsCommand::Delete(IdArg { id, client }) => {
            let done = async |_: &Value| vec![format!("Deleted tunnel {id} and its captured requests.")];
            show(&client, Method::DELETE, &format!("/api/tunnels/{id}"), None, done).await?;
        }
        TunnelsCommand::Status(IdArg { id, client }) => {
            // For a person, what `get` shows too (when it last connected, its
            // URL): seed 001's status answer carries only the id, name and status.
            let human = async |v: &Value| {
                let mut v = v.clone();
                if let Ok(api) = api(&client)
                    && let Ok(got) = api.call(Method::GET, &format!("/api/tunnels/{id}"), None).await
                    && got["tunnel"].is_object()
                {
                    v["tunnel"] = got["tunnel"].clone();
                }
                tunnel_lines(&client)(&v).await
            };
            show(&client, Method::GET, &format!("/api/tunnels/{id}/status"), None, human).await?;
        }
        TunnelsCommand::RegenerateToken(IdArg { id, client }) => {
            let path = format!("/api/tunnels/{id}/regenerate-token");
            let v = show(&client, Method::POST, &path, None, tunnel_lines(&client)).await?;
            if !client.json {
                token_reminder(&v);
            }
        }
        TunnelsCommand::Test(args) => test_request_cli::run(args).await?,
        TunnelsCommand::Disconnect(IdArg { id, client }) => {
            let done = async |_: &Value| {
                vec![format!(
                    "Disconnected tunnel {id}: its client, if one was connected, was told to stop and will not \
                     reconnect."
                )]
            };
            show(&client, Method::POST, &format!("/api/tunnels/{id}/disconnect"), None, done).await?;
        }
        TunnelsCommand::Connect(cmd) => connect_existing(cmd, false).await?,
        TunnelsCommand::Monitor(cmd) => connect_existing(cmd, true).await?,
        TunnelsCommand::Inspect(cmd) => inspect_cli::run(cmd).await?,
    }
    Ok(())
}

/// `tunnels connect` (`monitor` false) and `tunnels monitor`: the same
/// connection, shown as lines or full-screen.
async fn connect_existing(cmd: ConnectCmd, monitor: bool) -> Result<()> {
    let ConnectCmd { id, port, token, mut ws_url, connect, client } = cmd;
    if monitor {
        // The monitor reads the captured requests through the API: check before connecting.
        api(&client)?;
        if client.json {
            usage!("monitor shows a full-screen view: it does not combine with --json");
        }
    }
    // (`parse` checked that a --token and a --ws-url agree.)
    let token = match token.or_else(|| ws_url.as_ref().map(|url| url.token().to_owned())) {
        Some(t) => t,
        None => {
            let creds = api(&client)?.regenerate_credentials(&id).await?;
            if !client.json {
                eprintln!("No --token given: issued a new auth token for {id} (the previous one no longer works).");
            }
            // (Its wsUrl is made of the public URL: see `start`. Made of the
            // server URL instead, here, from the answer: a lookup after the new
            // token that failed would lose the token.)
            if connect.ws
                && let Some(tunnel) = &creds.tunnel
            {
                ws_url = Some(parse_ws_url(&ws_url_for(&client.server, &tunnel.subdomain, &id, &creds.auth_token)?)?);
            }
            creds.auth_token
        }
    };
    if connect.ws && ws_url.is_none() {
        if client.key().is_none() {
            usage!(
                "--ws with --token needs the tunnel's wsUrl: pass --ws-url '<wsUrl from tunnels create>', \
                 or --api-key so it can be looked up"
            );
        }
        let tunnel = api(&client)?.tunnel(&id).await?;
        ws_url = Some(parse_ws_url(&ws_url_for(&client.server, &tunnel.subdomain, &id, &token)?)?);
    }
    if !client.json && !monitor && client.key().is_some() {
        tunnel_banner(&client, &id).await;
    }
    serve(&client, connect, ws_url, id, token, port, monitor).await.0
}

/// The tunnel `tunnels connect` serves, and its inbound options, as `start`
/// shows them: a tunnel set up days ago may ask callers for a password or
/// throttle them, which its user should not have to remember. Best effort: a
/// failed lookup leaves it out, and connecting says what is wrong, if anything.
async fn tunnel_banner(client: &ClientArgs, id: &str) {
    let Ok(api) = api(client) else { return };
    let path = format!("/api/tunnels/{id}");
    let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(5), api.call(Method::GET, &path, None)).await else {
        return;
    };
    let t = &v["tunnel"];
    let name = inspect_cli::records::clean(t["name"].as_str().unwrap_or_default());
    println!("Tunnel {id} ({name})");
    if let Some(options) = inbound_cli::summary(t) {
        println!("  Inbound:     {options}");
    }
}

/// A wsUrl from the API, or built from one of its answers.
fn parse_ws_url(url: &str) -> Result<client::WsUrl> {
    url.parse().context("the server's wsUrl for the tunnel")
}

/// seed 001's `wsUrl`, built from the server URL the client uses.
fn ws_url_for(server: &str, subdomain: &str, id: &str, token: &str) -> Result<String> {
    let base = if let Some(rest) = server.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = server.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        usage!("--server must start with http:// or https:// (got {server:?})");
    };
    Ok(hookway::wsjson::ws_url(&base, subdomain, id, token))
}

/// Calls the API and prints its answer: one line of JSON with `--json`, else
/// pretty-printed. Returns the answer for commands that add a hint.
/// Calls the API and prints its answer: as it came with `--json`, else as
/// the `human` lines.
async fn show(
    client: &ClientArgs,
    method: Method,
    path: &str,
    body: Option<&Value>,
    human: impl AsyncFnOnce(&Value) -> Vec<String>,
) -> Result<Value> {
    let v = api(client)?.call(method, path, body).await?;
    if client.json {
        println!("{v}");
    } else {
        for line in human(&v).await {
            println!("{line}");
        }
    }
    Ok(v)
}

/// [`tunnels_cli::tunnel_lines`] for [`show`]. An answer that carries no
/// `tunnelUrl` gets one from the server's public URL, asked of `/api/info`
/// then only (the address this CLI reaches the server at may be another, such
/// as a local one).
fn tunnel_lines(client: &ClientArgs) -> impl AsyncFnOnce(&Value) -> Vec<String> + '_ {
    async move |v: &Value| {
        let mut base = client.server.clone();
        let mut with_host = None;
        if v["tunnelUrl"].is_null()
            && let Some(sub) = v["tunnel"]["subdomain"].as_str()
            && let Ok(api) = api(client)
            && let Ok(info) = api.info().await
        {
            // The host-based URL too, which only `create` carries.
            if let Some(url) = info.domain.as_deref().and_then(|domain| host_url(&info.public_url, domain, sub)) {
                let mut v = v.clone();
                v["hostUrl"] = Value::String(url);
                with_host = Some(v);
            }
            base = info.public_url;
        }
        tunnels_cli::tunnel_lines(with_host.as_ref().unwrap_or(v), &base)
    }
}

/// `{scheme}://{subdomain}.{domain}[:port]`, as the server makes a tunnel's
/// host-based URL from its public URL; none for the public URL's own host.
fn host_url(public_url: &str, domain: &str, subdomain: &str) -> Option<String> {
    // `http::Uri`, as the server parses it: it keeps an explicit default port
    // (`https://h:443`), which `url::Url` drops.
    let url: http::Uri = public_url.parse().ok()?;
    if url.host().is_some_and(|own| own.eq_ignore_ascii_case(&format!("{subdomain}.{domain}"))) {
        return None;
    }
    Some(hookway::server::host_url(url.scheme_str()?, subdomain, domain, url.port_u16()))
}

/// After an answer that issued an auth token: it is not shown again.
fn token_reminder(v: &Value) {
    eprintln!(
        "\nThe auth token is shown only now: store it. Connect with: {} tunnels connect {} <port> --token <auth \
         token>{}",
        own_command(),
        v["tunnel"]["id"].as_str().unwrap_or(""),
        server_option()
    );
}

#[cfg(all(test, feature = "mimalloc", target_os = "linux"))]
mod allocator_tests {
    /// The initializer ran before the tests' runtime allocated: mimalloc
    /// reports the option as set (its default on Linux is 2).
    #[test]
    fn arenas_are_committed_lazily() {
        // SAFETY: reads an option value.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(4) }, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Suggested commands work as printed in any shell: a bracketed IPv6
    /// server or a path with a space is quoted, a plain one is not.
    #[test]
    fn suggested_words_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(shell_word("http://127.0.0.1:8080/hooks"), "http://127.0.0.1:8080/hooks");
        assert_eq!(shell_word("http://[::1]:8080"), "'http://[::1]:8080'");
        assert_eq!(shell_word("/tmp/my data"), "'/tmp/my data'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    /// A suggested `tunnels connect` keeps a pinned fingerprint: left out,
    /// the next run would trust whatever certificate the server announces.
    #[test]
    fn serving_again_keeps_the_pin_and_the_way_in() {
        let connect = ConnectArgs {
            local_host: "::1".into(),
            fingerprint: Some("ab".repeat(32)),
            quic_addr: Some("[::1]:4443".into()),
            ws: false,
            busy_poll_us: 0,
        };
        let pin = "ab".repeat(32);
        assert_eq!(connect.same_way(), format!(" --fingerprint {pin} --local-host ::1 --quic-addr '[::1]:4443'"));
    }

    #[test]
    fn host_urls_are_made_as_the_server_makes_them() {
        assert_eq!(host_url("https://h.test:443", "t.test", "a").as_deref(), Some("https://a.t.test:443"));
        assert_eq!(host_url("http://h.test/hooks", "t.test", "a").as_deref(), Some("http://a.t.test"));
        assert_eq!(host_url("https://a.t.test", "t.test", "a"), None, "the public URL's own host");
    }

    #[test]
    fn listen_addresses_are_ips_or_localhost() {
        assert_eq!(listen_addr("0.0.0.0:80"), Ok("0.0.0.0:80".parse().unwrap()));
        assert_eq!(listen_addr("[::]:4443"), Ok("[::]:4443".parse().unwrap()));
        assert_eq!(listen_addr("localhost:8080"), Ok("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(listen_addr("LocalHost:0"), Ok("127.0.0.1:0".parse().unwrap()));
        assert!(listen_addr("localhost:http").unwrap_err().contains("not a port"));
        assert!(listen_addr("example.com:80").unwrap_err().contains("give an IP address and port"));
        assert!(listen_addr("8080").unwrap_err().contains("like 127.0.0.1:8080"));
    }

    #[test]
    fn organization_names_are_shown_safely() {
        assert_eq!(org_name("  acme corp ").as_deref(), Ok("acme corp"));
        assert_eq!(org_name("Müller & Söhne").as_deref(), Ok("Müller & Söhne"));
        assert!(org_name("").is_err() && org_name("   ").is_err());
        assert!(org_name(&"x".repeat(101)).is_err());
        assert_eq!(org_name(&"é".repeat(100)).map(|n| n.chars().count()), Ok(100));
        for bad in ["evil\u{1b}[2J", "line\nbreak", "tab\there", "abc\u{202e}fed", "x\u{2066}y"] {
            assert!(org_name(bad).unwrap_err().contains("control characters"), "{bad:?}");
        }
    }

    /// Issue: `--quic-public-addr 127.0.0.1` was taken, and its clients
    /// retried for ever, saying they could not resolve it.
    #[test]
    fn dial_addresses_need_a_host_and_a_port() {
        for good in ["tunnels.example.com:4443", "203.0.113.7:4443", "[2001:db8::7]:4443", "localhost:1"] {
            assert_eq!(dial_addr(good).as_deref(), Ok(good));
        }
        assert!(dial_addr("127.0.0.1").unwrap_err().starts_with("no port"));
        assert!(dial_addr("x").unwrap_err().starts_with("no port"));
        for bad_port in ["h:0", "h:http", "h:70000", "h:"] {
            assert!(dial_addr(bad_port).unwrap_err().contains("is not a port"), "{bad_port}");
        }
        for bad_host in [":4443", "[]:4443", "2001:db8::7:4443", "a b:1", "http://h:1"] {
            assert!(dial_addr(bad_host).unwrap_err().starts_with("give a host and port"), "{bad_host}");
        }
    }

    #[test]
    fn error_chains_name_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:80: {source}")]
        struct Bind {
            source: std::io::Error,
        }
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let err = anyhow::Error::new(Bind { source: io }).context("cannot start the server");
        assert_eq!(
            error_chain(err.as_ref()),
            "cannot start the server: cannot listen on 127.0.0.1:80: Address already in use"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(plain.as_ref()), "outer: inner");
    }

    /// The `--json` request line is byte for byte what the `Value` it replaced
    /// printed, with and without a status, an error and a record's id.
    #[test]
    fn request_line_reads_as_before() {
        let logs = [
            client::RequestLog {
                id: Some("req_0192f3a4b5c600000001".into()),
                method: "POST".into(),
                path: "/hook?a=\"1\"".into(),
                status: Some(201),
                duration: Duration::from_micros(1234),
                error: None,
            },
            client::RequestLog {
                id: None,
                method: "GET".into(),
                path: "/".into(),
                status: None,
                duration: Duration::from_millis(5),
                error: Some("the local app at 127.0.0.1:3000 refused the connection".into()),
            },
        ];
        for log in &logs {
            // `event` first, as in every event line.
            let before = json!({
                "event": "request", "requestId": log.id, "method": log.method, "path": log.path, "status": log.status,
                "durationMs": log.duration.as_micros() as f64 / 1000.0, "error": log.error,
            })
            .to_string();
            assert_eq!(RequestLine::render(log), before);
            let (stream, text) = render_event(&Event::Request(log.clone()), true, "127.0.0.1:3000");
            assert_eq!((stream, text), (output::Stream::Stdout, before + "\n"));
        }
        // Plain lines end with the record's id, then what went wrong; a long
        // path is cut, and a control character in it cannot reach the terminal.
        let long = client::RequestLog {
            path: format!("/\u{9b}2J/{}", "a".repeat(100)),
            status: Some(200),
            error: None,
            ..logs[0].clone()
        };
        let plain: Vec<String> = [&logs[0], &logs[1], &long]
            .iter()
            .map(|log| render_event(&Event::Request((*log).clone()), false, "").1)
            .collect();
        assert_eq!(
            plain,
            [
                format!("POST    {:<40} 201  1.2ms  req_0192f3a4b5c600000001\n", "/hook?a=\"1\""),
                format!("GET     {:<40} ERR  5.0ms  the local app at 127.0.0.1:3000 refused the connection\n", "/"),
                format!("POST    /\u{fffd}2J/{}… 200  1.2ms  req_0192f3a4b5c600000001\n", "a".repeat(54)),
            ]
        );
    }

    /// An id pasted with the spaces around it is the id; one with a space,
    /// a slash or a query inside is refused before it reaches a URL.
    #[test]
    fn ids_are_taken_trimmed_and_checked() {
        assert_eq!(resource_id(" req_01a20d8b5945866f1903  ").as_deref(), Ok("req_01a20d8b5945866f1903"));
        for bad in ["", "  ", "req 1", "../keys", "x?y", "tun_é"] {
            assert!(resource_id(bad).unwrap_err().starts_with("not an id"), "{bad:?}");
        }
    }

    /// With `--json`, a hint on a line of its own is a field of its own:
    /// `error` is the one-line message plain mode prints after `Error: `.
    #[test]
    fn a_json_error_keeps_its_hint_apart() {
        let err = anyhow::anyhow!("the tunnel was disconnected\nTo serve it again: hookway tunnels connect tun_1 3000");
        let v: Value = serde_json::from_str(&error_line(&err, true)).unwrap();
        let hint = "To serve it again: hookway tunnels connect tun_1 3000";
        assert_eq!(v, json!({ "error": "the tunnel was disconnected", "hint": hint }));
        assert_eq!(error_line(&err, false), format!("Error: the tunnel was disconnected\n{hint}"));
        let plain: Value = serde_json::from_str(&error_line(&anyhow::anyhow!("no"), true)).unwrap();
        assert_eq!(plain, json!({ "error": "no" }));
    }
}
