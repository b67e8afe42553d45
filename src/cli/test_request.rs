//! `hookway tunnels test`: one request to a tunnel's public URL, as a webhook
//! sender would make it (seed 004's "test request"), through everything a
//! real one meets: the edge, the tunnel's inbound options, the client, the app.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::ClientArgs;

/// Longest part of the answer's body printed (the rest is counted).
const SHOWN: usize = 64 * 1024;

#[derive(Args)]
pub struct TestArgs {
    /// Tunnel id (tun_…).
    #[arg(value_parser = crate::resource_id)]
    id: String,
    /// Method of the request.
    #[arg(long, short = 'X', default_value = "POST")]
    method: String,
    /// Path and query, after the tunnel's URL.
    #[arg(long, default_value = "/")]
    path: String,
    /// Body, which must be valid JSON (sent as application/json). Default for a POST, PUT or
    /// PATCH: {"test": true}.
    #[arg(long)]
    body: Option<String>,
    /// Header to send, as "Name: value" (repeatable), such as a signature the app checks.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Basic auth credentials, as USER:PASSWORD, for a tunnel that requires them.
    #[arg(long, value_name = "USER:PASSWORD", value_parser = crate::inbound_cli::basic_auth)]
    basic_auth: Option<(String, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Sends the test request; fails (exit 1) unless the answer is a 2xx.
pub async fn run(args: TestArgs) -> Result<()> {
    let Ok(method) = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()) else {
        usage!("'{}' is no HTTP method", args.method);
    };
    if !args.path.starts_with('/') {
        usage!("--path starts with '/', like /webhooks/stripe?test=1");
    }
    // The URL parser would resolve dot segments out of the tunnel's URL
    // (`/../api/…`), and a fragment is never sent.
    let path_part = args.path.split('?').next().unwrap_or_default();
    let dots = path_part.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    if dots || args.path.contains('#') {
        usage!("--path is a path in the tunnel, without '.' or '..' segments or a '#' fragment");
    }
    let body = match &args.body {
        Some(text) => {
            if let Err(e) = serde_json::from_str::<Value>(text) {
                usage!("--body must be valid JSON: {e}");
            }
            Some(text.clone())
        }
        None if [Method::POST, Method::PUT, Method::PATCH].contains(&method) => Some(r#"{"test": true}"#.to_owned()),
        None => None,
    };
    let api = crate::api(&args.client)?;
    let tunnel = api.call(Method::GET, &format!("/api/tunnels/{}", args.id), None).await?;
    let subdomain = tunnel["tunnel"]["subdomain"].as_str().context("the API's tunnel has no subdomain")?;
    // The public URL, as a sender uses it (the server may be reached here by
    // another address).
    let base = api.info().await.map(|i| i.public_url).unwrap_or_else(|_| args.client.server.clone());
    let url = format!("{}/t/{subdomain}{}", base.trim_end_matches('/'), args.path);

    hookway::quic::tls::install_default_provider();
    // Redirects are the app's answer, not followed (senders do not).
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut req = http.request(method.clone(), &url);
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else { usage!("-H '{h}': give \"Name: value\"") };
        req = req.header(name.trim(), value.trim());
    }
    if let Some((user, password)) = &args.basic_auth {
        req = req.basic_auth(user, Some(password));
    }
    let started = Instant::now();
    let resp = req.send().await.with_context(|| format!("cannot send the test request to {url}"))?;
    let status = resp.status();
    // Whether the server answered by itself, not the app: an error, a
    // handshake, or the offline reply.
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // An offline reply keeps the request for `replay-offline`, a test's too.
    let kept_for_replay = header("x-hookway-offline").is_some_and(|v| v == "recorded");
    let edge = header("x-hookway-error")
        .or_else(|| header("x-hookway-verification").map(|kind| format!("{kind} verification")))
        .or_else(|| header("x-hookway-offline").map(|_| "offline reply: the tunnel has no client".to_owned()));
    let bytes = resp.bytes().await.context("the answer's body broke off")?;
    // (To the microsecond, as the API gives durations: no float noise.)
    let ms = started.elapsed().as_micros() as f64 / 1000.0;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]).into_owned();
    if args.client.json {
        let by = if edge.is_some() { "server" } else { "app" };
        let line = json!({ "url": url, "status": status.as_u16(), "durationMs": ms, "answeredBy": by,
                           "serverAnswer": edge, "body": text });
        println!("{line}");
    } else {
        let from = match &edge {
            Some(kind) => format!(" (answered by the hookway server: {kind})"),
            None => String::new(),
        };
        println!("{method} {url} → {status}{from} in {ms:.1} ms");
        if !text.is_empty() {
            println!("{}", text.trim_end());
        }
        if bytes.len() > SHOWN {
            println!("… ({} more bytes)", bytes.len() - SHOWN);
        }
    }
    if !status.is_success() {
        if edge.as_deref() == Some("unauthorized") {
            if args.basic_auth.is_none() {
                bail!(
                    "the test request was answered {status}: the tunnel requires basic auth (pass --basic-auth \
                     USER:PASSWORD)"
                );
            }
            bail!(
                "the test request was answered {status}: the tunnel refused the --basic-auth credentials given (the \
                 tunnel shows its user name in `tunnels get`; set new ones with `tunnels update ID --basic-auth`)"
            );
        }
        let remedy = edge.as_deref().map_or_else(String::new, |kind| crate::inspect_cli::remedy(kind, &args.id));
        bail!("the test request was answered {status}{remedy}");
    }
    if let Some(kind) = edge {
        if kept_for_replay {
            bail!(
                "the test request did not reach the app: the hookway server answered ({kind}); it was recorded, so \
                 `{} tunnels replay-offline {}{}` will send it to your app along with the requests that met the \
                 tunnel offline",
                crate::own_command(),
                args.id,
                crate::server_option()
            );
        }
        bail!("the test request did not reach the app: the hookway server answered ({kind})");
    }
    Ok(())
}
