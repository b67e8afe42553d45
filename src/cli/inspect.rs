//! `hookway tunnels requests|request|replay|clear-requests`: the requests a
//! tunnel captured, from the shell.

#[path = "records.rs"]
pub mod records;

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value};

use hookway::client::ApiError;
use hookway::server::requests_api::REPLAY_BODY_HINT;

use super::{ClientArgs, api};
use records::{Summary, clean, detail_lines, fit};

/// Width assumed when stdout is not a terminal and `COLUMNS` is unset: wide
/// enough that typical webhook paths are not cut in logs and pipes.
const DEFAULT_WIDTH: usize = 120;
/// Width of every column but PATH, separators included.
const FIXED_COLUMNS: usize = 12 + 1 + 7 + 1 + 1 + 6 + 1 + 10 + 1 + 24 + 1 + 24;

#[derive(Subcommand)]
pub enum InspectCommand {
    /// Requests the tunnel captured, newest first.
    Requests {
        /// Tunnel id (tun_…).
        #[arg(value_parser = crate::resource_id)]
        id: String,
        /// How many (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only requests older than this one (req_…): the next page.
        #[arg(long, value_name = "REQ", value_parser = crate::resource_id)]
        before: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One captured request in full: headers and bodies of the request and the response.
    Request {
        #[command(flatten)]
        request: RequestArg,
        /// Print only this body, byte for byte (binary too), for a file or a pipe:
        /// `--body-only response > out.bin`; the request's without a value (`--body-only > body`,
        /// for `tunnels replay … --body-file body`).
        #[arg(
            long,
            value_name = "request|response",
            value_parser = ["request", "response"],
            num_args = 0..=1,
            default_missing_value = "request"
        )]
        body_only: Option<String>,
    },
    /// Send a captured request to the tunnel again, optionally with another body or headers.
    Replay {
        #[command(flatten)]
        request: RequestArg,
        /// Body to send instead of the captured one.
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// File whose content is sent as the body (binary files are fine).
        #[arg(long, value_name = "PATH")]
        body_file: Option<std::path::PathBuf>,
        /// Header to set, as "Name: value" (repeatable); "Name:" with no value removes it.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Replay, oldest first, every request recorded while the tunnel was offline (an offline
    /// reply's, or a 503's) that no replay brought to the app yet; stops at the first that does not reach the app.
    ReplayOffline {
        /// Tunnel id (tun_…).
        #[arg(value_parser = crate::resource_id)]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete every captured request of the tunnel.
    ClearRequests {
        /// Tunnel id (tun_…).
        #[arg(value_parser = crate::resource_id)]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct RequestArg {
    /// Tunnel id (tun_…).
    #[arg(value_parser = crate::resource_id)]
    id: String,
    /// Request id (req_…).
    #[arg(value_parser = crate::resource_id)]
    req: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// The exact bytes of a captured `part` (`request` or `response`, its
/// `which`): an error when none was captured, a note on stderr when the
/// capture kept only its start.
fn body_bytes(part: &Value, which: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let Some(body) = part["body"].as_str() else {
        bail!("the {which} body was not captured (no {which}, or the tunnel keeps no bodies)");
    };
    if records::none_received(part) {
        bail!(
            "none of the {which} body was received (not read: no client took the request, or its caller left first; \
             or broken off before its first byte): not known"
        );
    }
    let bytes = if part["bodyEncoding"] == "base64" {
        base64::engine::general_purpose::STANDARD.decode(body).context("the captured body is not valid base64")?
    } else {
        body.as_bytes().to_vec()
    };
    let size = part["bodySize"].as_u64().unwrap_or(0);
    if records::received_short(part, bytes.len()) {
        eprintln!("{}", records::incomplete(size));
    } else if part["truncated"] == true {
        eprintln!("(truncated: the first {} of {size} bytes were captured)", bytes.len());
    }
    Ok(bytes)
}

/// A 404 for a request id, on a server run with `--no-capture`, says why:
/// such a server records no requests, so no id finds one.
async fn explain_not_found(api: &hookway::client::ApiClient, err: ApiError) -> anyhow::Error {
    if let ApiError::Status { status: 404, message } = &err {
        if message.starts_with("request") && api.info().await.is_ok_and(|info| !info.capture) {
            return anyhow::anyhow!("{message}: this server runs with --no-capture, so it records no requests");
        }
    }
    err.into()
}

/// Runs an inspection subcommand.
pub async fn run(cmd: InspectCommand) -> Result<()> {
    match cmd {
        InspectCommand::Requests { id, limit, before, client } => {
            let mut path = format!("/api/tunnels/{id}/requests?limit={limit}");
            if let Some(before) = &before {
                path.push_str(&format!("&before={before}"));
            }
            let api = api(&client)?;
            let v = api.list(&path, "requests").await?;
            if client.json {
                println!("{v}");
                return Ok(());
            }
            let items = v["requests"].as_array().map_or(0, Vec::len);
            if items == 0 {
                let capture = api.info().await.map_or(true, |info| info.capture);
                // `tunnels monitor` would take a served tunnel over from its client.
                let served = async {
                    let v = api.call(Method::GET, &format!("/api/tunnels/{id}"), None).await;
                    v.is_ok_and(|v| v["tunnel"]["status"] == "connected")
                };
                match &before {
                    Some(before) => eprintln!("No captured requests of {id} before {before}."),
                    None if !capture => eprintln!(
                        "No captured requests: this server runs with --no-capture, so it records none \
                         (restart it without that flag to inspect requests)."
                    ),
                    None if served.await => eprintln!(
                        "No captured requests yet: requests to the tunnel's URL show here (its client is connected)."
                    ),
                    None => eprintln!(
                        "No captured requests yet: requests to the tunnel's URL show here \
                         (`{} tunnels monitor {id} <port>{}` serves it and watches them arrive).",
                        crate::own_command(),
                        crate::server_option()
                    ),
                }
                return Ok(());
            }
            print_table(&v, terminal_width());
            let last = v["requests"][items - 1]["id"].as_str().unwrap_or("");
            // A full page may be all there is: offered only when one more is
            // there (a look at one record past it).
            let more = items == limit as usize
                && api
                    .list(&format!("/api/tunnels/{id}/requests?limit=1&before={last}"), "requests")
                    .await
                    .is_ok_and(|next| next["requests"].as_array().is_some_and(|r| !r.is_empty()));
            if more {
                eprintln!(
                    "More: {} tunnels requests {id} --limit {limit} --before {last}{}",
                    crate::own_command(),
                    crate::server_option()
                );
            }
        }
        InspectCommand::Request { request: RequestArg { id, req, client }, body_only } => {
            if body_only.is_some() && client.json {
                usage!("--body-only prints the body's raw bytes: it does not combine with --json");
            }
            let api = api(&client)?;
            let v = match api.call(Method::GET, &format!("/api/tunnels/{id}/requests/{req}"), None).await {
                Ok(v) => v,
                Err(err) => return Err(explain_not_found(&api, err).await),
            };
            if let Some(which) = body_only {
                let bytes = body_bytes(&v["request"][&which], &which)?;
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes).and_then(|()| out.flush()).context("cannot write the body")?;
                return Ok(());
            }
            if client.json {
                println!("{v}");
                return Ok(());
            }
            for l in detail_lines(&v["request"], usize::MAX) {
                println!("{}", l.text);
            }
        }
        InspectCommand::Replay { request: RequestArg { id, req, client }, body, body_file, headers } => {
            let payload = replay_body(body, body_file, &headers)?;
            let path = format!("/api/tunnels/{id}/requests/{req}/replay");
            let v =
                api(&client)?.call(Method::POST, &path, Some(&payload)).await.map_err(|e| cli_wording(e, &id, &req))?;
            let new: Summary = serde_json::from_value(v["request"].clone()).context("replay answer")?;
            if client.json {
                println!("{v}");
            } else {
                let (status, outcome, took) = (new.status_text(), &new.outcome, new.duration_text());
                println!("Replayed {req} as {}: {status} {outcome} in {took}", new.id);
            }
            if let Some(kind) = edge_error(&v["request"]) {
                let status = new.status_text();
                // (A 413 `body-too-large` is a body the edge refused; its 502
                // is an answer of the app's too large for a WebSocket tunnel.)
                if NOT_DELIVERED.contains(&kind.as_str()) || (kind == "body-too-large" && new.status == Some(413)) {
                    bail!("the replay did not reach the app: the edge answered {status} {kind}{}", remedy(&kind, &id));
                }
                // (A 504, an app's broken answer, a client gone: the app may
                // have seen the request.)
                bail!("the edge answered the replay {status} {kind} in the app's place; the app may have seen it");
            }
        }
        InspectCommand::ReplayOffline { id, client } => replay_offline(&id, &client).await?,
        InspectCommand::ClearRequests { id, client } => {
            let v = api(&client)?.call(Method::DELETE, &format!("/api/tunnels/{id}/requests"), None).await?;
            if client.json {
                println!("{v}");
            } else {
                println!("Deleted {} captured requests of {id}.", v["deleted"]);
            }
        }
    }
    Ok(())
}

/// A replay of `req` (of tunnel `id`) refused for want of a whole captured
/// body (409) tells API users to send `{"body": …}`; from the shell that is
/// `--body` or `--body-file`, and what was kept of it is a command away.
fn cli_wording(err: ApiError, id: &str, req: &str) -> ApiError {
    match err {
        ApiError::Status { status: 409, message } if message.contains(REPLAY_BODY_HINT) => {
            let mut instead = "pass the body to send with --body TEXT or --body-file PATH".to_owned();
            // Where some of it was kept: how to get that much (where none
            // was, `--body-only` would only fail).
            if !message.starts_with("bodies are not captured") && !message.starts_with("none of the request's body") {
                instead += &format!(
                    " (what was kept of it: {} tunnels request {id} {req} --body-only{} > PATH)",
                    crate::own_command(),
                    crate::server_option()
                );
            }
            ApiError::Status { status: 409, message: message.replace(REPLAY_BODY_HINT, &instead) }
        }
        other => other,
    }
}

/// The kind of the edge's own answer (`local-unreachable`, `tunnel-offline`,
/// `timeout`, …) when the replay got one instead of the app's: the
/// `x-hookway-error` header of the recorded response. An answer of the app,
/// whatever its status, is `None`, even one carrying that header itself: the
/// record's `outcome` names the edge's error only when the edge made it.
fn edge_error(detail: &Value) -> Option<String> {
    let header = &detail["response"]["headers"]["x-hookway-error"];
    let kind = header.as_str().or_else(|| header[0].as_str())?;
    (detail["outcome"] == kind).then(|| records::clean(kind))
}

/// The columns the user asked for; PATH takes what the others leave.
fn print_table(v: &Value, width: usize) {
    let path_width = width.saturating_sub(FIXED_COLUMNS).max(16);
    println!(
        "{:<12} {:<7} {:<path_width$} {:>6} {:>10} {:<24} ID",
        "TIME", "METHOD", "PATH", "STATUS", "DURATION", "OUTCOME"
    );
    for item in v["requests"].as_array().into_iter().flatten() {
        let Ok(s) = serde_json::from_value::<Summary>(item.clone()) else { continue };
        println!(
            "{:<12} {:<7} {:<path_width$} {:>6} {:>10} {:<24} {}",
            s.clock(),
            fit(&s.method, 7),
            fit(&records::clean(&s.path), path_width),
            s.status_text(),
            s.duration_text(),
            s.outcome_text(),
            s.id
        );
    }
}

/// The terminal's width, else `COLUMNS`, else [`DEFAULT_WIDTH`].
pub fn terminal_width() -> usize {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        if let Ok((cols, _)) = crossterm::terminal::size() {
            return usize::from(cols);
        }
    }
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_WIDTH)
}

/// Edge answers that say the app never saw a request: no client took it, or
/// the app refused the connection. After any other (a timeout, the client
/// gone mid-request) the app may have seen it, and replaying it again could
/// deliver it twice.
const NOT_DELIVERED: [&str; 2] = ["tunnel-offline", "local-unreachable"];

/// What to do about a request the edge answered itself with `kind`, for the
/// end of an error line ("" when there is nothing to say).
pub fn remedy(kind: &str, id: &str) -> String {
    match kind {
        "tunnel-offline" => format!(
            ": no client serves the tunnel (`{} tunnels connect {id} <port>{}` serves it)",
            crate::own_command(),
            crate::server_option()
        ),
        "local-unreachable" => ": the tunnel's client could not reach the local app (is it listening on the port the \
                                client forwards to?)"
            .to_owned(),
        _ => String::new(),
    }
}

/// `tunnels replay-offline`: the tunnel's kept records of requests that met
/// it offline and have no replay that reached the app yet, each replayed in
/// the order they came.
async fn replay_offline(id: &str, client: &ClientArgs) -> Result<()> {
    let api = api(client)?;
    let v = api.list(&format!("/api/tunnels/{id}/requests?limit=1000"), "requests").await?;
    let list = v["requests"].as_array().cloned().unwrap_or_default();
    // A replay the app never saw (the tunnel still offline, the app down)
    // leaves its request waiting, or it would never reach the app at all;
    // any other takes it off the list, since the app may have seen it.
    let replayed: std::collections::HashSet<&str> = list
        .iter()
        .filter(|r| !r["outcome"].as_str().is_some_and(|o| NOT_DELIVERED.contains(&o)))
        .filter_map(|r| r["replayOf"].as_str())
        .collect();
    let waiting: Vec<&Value> = list
        .iter()
        .rev() // oldest first
        .filter(|r| r["outcome"] == "tunnel-offline" && r["replayOf"].is_null())
        .filter(|r| !r["id"].as_str().is_some_and(|rid| replayed.contains(rid)))
        .collect();
    if waiting.is_empty() && !client.json {
        if list.is_empty() && api.info().await.is_ok_and(|info| !info.capture) {
            eprintln!("Nothing to replay: this server runs with --no-capture, so it records no requests.");
        } else {
            eprintln!("Nothing to replay: no request recorded while {id} was offline is waiting.");
        }
    }
    // With --json, one document at the end: {"requests": [the new records…]}.
    let mut replayed = Vec::new();
    let mut stopped = None;
    let mut skipped = 0;
    for (done, r) in waiting.iter().enumerate() {
        let rid = r["id"].as_str().unwrap_or_default();
        let path = format!("/api/tunnels/{id}/requests/{rid}/replay");
        let v = match api.call(Method::POST, &path, Some(&serde_json::json!({}))).await {
            Ok(v) => v,
            // A record whose body is not kept whole cannot be replayed as it
            // came: said, and passed over, or it would stop every run here.
            Err(ApiError::Status { status: 409, message }) if message.contains(REPLAY_BODY_HINT) => {
                skipped += 1;
                let why = message.replace(&format!("; {REPLAY_BODY_HINT}"), "");
                eprintln!(
                    "Skipped {rid}: {why}; to send it with its body: {} tunnels replay {id} {rid} --body-file FILE{}",
                    crate::own_command(),
                    crate::server_option()
                );
                continue;
            }
            Err(err) => {
                let done = done - skipped;
                stopped = Some(anyhow::anyhow!(
                    "replayed {done} of {}, then stopped: {:#}",
                    waiting.len(),
                    cli_wording(err, id, rid)
                ));
                break;
            }
        };
        let new: Summary = serde_json::from_value(v["request"].clone()).context("replay answer")?;
        if !client.json {
            let (method, path) = (r["method"].as_str().unwrap_or(""), r["path"].as_str().unwrap_or(""));
            let what = format!("{} {}", clean(method), clean(path));
            println!("Replayed {rid} ({what}) as {}: {} {}", new.id, new.status_text(), new.outcome);
        }
        let kind = edge_error(&v["request"]);
        replayed.push(v["request"].clone());
        if let Some(kind) = kind {
            let (total, status, done) = (waiting.len(), new.status_text(), done - skipped);
            stopped = Some(if NOT_DELIVERED.contains(&kind.as_str()) {
                anyhow::anyhow!(
                    "replayed {done} of {total}, then stopped: the replay of {rid} did not reach the app (the edge \
                     answered {status} {kind}); it and those after it still wait: run this again once the app is \
                     reachable"
                )
            } else {
                anyhow::anyhow!(
                    "replayed {} of {total}, then stopped: the edge answered the replay of {rid} {status} {kind}, \
                     after the app may have seen it, so it is not replayed again (`{} tunnels request {id} {}{}` \
                     shows it); those after it still wait: run this again",
                    done + 1,
                    crate::own_command(),
                    new.id,
                    crate::server_option()
                )
            });
            break;
        }
    }
    if client.json {
        println!("{}", serde_json::json!({ "requests": replayed }));
    }
    stopped.map_or(Ok(()), Err)
}

/// The replay request: the body (UTF-8 as text, anything else base64, as the
/// API wants) and the header changes.
fn replay_body(body: Option<String>, body_file: Option<std::path::PathBuf>, headers: &[String]) -> Result<Value> {
    let mut out = Map::new();
    if let Some(file) = body_file {
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read --body-file {}", file.display()))?;
        match String::from_utf8(bytes) {
            Ok(text) => {
                out.insert("body".into(), Value::String(text));
            }
            Err(err) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(err.into_bytes());
                out.insert("body".into(), Value::String(encoded));
                out.insert("bodyEncoding".into(), Value::String("base64".into()));
            }
        }
    } else if let Some(text) = body {
        out.insert("body".into(), Value::String(text));
    }
    if !headers.is_empty() {
        let mut map = Map::new();
        for h in headers {
            let Some((name, value)) = h.split_once(':') else {
                usage!("--header {h:?} must look like \"Name: value\" (or \"Name:\" to remove it)");
            };
            let value = value.trim();
            let value = if value.is_empty() { Value::Null } else { Value::String(value.to_owned()) };
            map.insert(name.trim().to_ascii_lowercase(), value);
        }
        out.insert("headers".into(), Value::Object(map));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_bodies_and_headers() {
        let dir = std::env::temp_dir().join(format!("hookway-replay-{}", std::process::id()));
        std::fs::write(&dir, [0xff, 0x00, 0x01]).unwrap();
        let v = replay_body(None, Some(dir.clone()), &["X-A: 1".into(), "Authorization:".into()]).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            v,
            json!({"body": "/wAB", "bodyEncoding": "base64", "headers": {"x-a": "1", "authorization": null}})
        );
        assert_eq!(replay_body(Some("hi".into()), None, &[]).unwrap(), json!({"body": "hi"}));
        assert_eq!(replay_body(None, None, &[]).unwrap(), json!({}));
        assert!(replay_body(None, None, &["nocolon".into()]).is_err());
    }
}
