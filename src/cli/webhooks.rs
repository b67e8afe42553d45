//! `hookway webhooks …`: the status webhooks API from the shell.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::inspect_cli::records::{clean, full_time, local_time, text};
use super::inspect_cli::terminal_width;
use super::table::{self, Align};
use super::{ClientArgs, ClientOnly, api, show};

/// The events a webhook can subscribe to.
const EVENTS_HELP: &str = "tunnel.connected, tunnel.disconnected, token.connected, token.disconnected";

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// List the organization's webhooks, with their 24 h health.
    List(ClientOnly),
    /// Show one webhook.
    Get(WebhookId),
    /// Create a webhook (prints its signing key once).
    Create {
        /// Destination URL (http or https).
        #[arg(long)]
        url: String,
        /// Events to send, comma-separated or repeated: tunnel.connected, tunnel.disconnected,
        /// token.connected, token.disconnected ("all" for every one).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Create it paused (enable later with `update --enable`).
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        fields: WebhookFields,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a webhook's fields.
    // The shared fields' help is worded for `create`.
    #[command(
        mut_arg("name", |a| a.help("New name")),
        mut_arg("group", |a| a.help("Only events of tunnels with this group label from now on (`--no-group` for all)")),
        mut_arg("headers", |a| a.help("Extra header sent with every delivery, as \"Name: value\" (repeatable); \
            the ones given replace all the webhook had (`--no-headers` for none)")),
    )]
    Update {
        /// Webhook id (wh_…).
        #[arg(value_parser = crate::resource_id)]
        id: String,
        /// New destination URL.
        #[arg(long)]
        url: Option<String>,
        /// New event list (replaces the old one).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Turn delivery back on.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Pause delivery.
        #[arg(long)]
        disable: bool,
        /// Send events of every group again.
        #[arg(long, conflicts_with = "group")]
        no_group: bool,
        /// Send no extra headers any more.
        #[arg(long, conflicts_with = "headers")]
        no_headers: bool,
        #[command(flatten)]
        fields: WebhookFields,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a webhook and its delivery log.
    Delete(WebhookId),
    /// Send a sample payload for each selected event (not logged).
    Test(WebhookId),
    /// Deliveries of the last 24 hours, newest first.
    Deliveries(WebhookId),
    /// Issue a new signing key (printed once); the old one stops signing at once.
    RegenerateSigningKey(WebhookId),
}

/// Fields shared by create and update.
#[derive(Args)]
pub struct WebhookFields {
    /// Name, for your reference (without it: the URL's host).
    #[arg(long)]
    name: Option<String>,
    /// Only events of tunnels with this group label.
    #[arg(long)]
    group: Option<String>,
    /// Extra header sent with every delivery, as "Name: value" (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
}

#[derive(Args)]
pub struct WebhookId {
    /// Webhook id (wh_…).
    #[arg(value_parser = crate::resource_id)]
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

fn events_json(events: &[String]) -> Result<Value> {
    let mut out = Vec::new();
    for e in events.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        if e == "all" {
            out.extend(EVENTS_HELP.split(", ").map(|e| Value::String(e.to_owned())));
        } else {
            out.push(Value::String(e.to_owned()));
        }
    }
    if out.is_empty() {
        usage!("--events needs at least one of: {EVENTS_HELP}");
    }
    Ok(Value::Array(out))
}

fn fields_json(fields: WebhookFields, body: &mut Map<String, Value>) -> Result<()> {
    if let Some(name) = fields.name {
        body.insert("name".into(), Value::String(name));
    }
    if let Some(group) = fields.group {
        body.insert("group".into(), Value::String(group));
    }
    if !fields.headers.is_empty() {
        let mut headers = Map::new();
        for h in fields.headers {
            let Some((name, value)) = h.split_once(':') else {
                usage!("--header {h:?} must look like \"Name: value\"");
            };
            headers.insert(name.trim().to_owned(), Value::String(value.trim().to_owned()));
        }
        body.insert("customHeaders".into(), Value::Object(headers));
    }
    Ok(())
}

/// A string field, made safe to print.
/// One row of `webhooks list`.
fn list_row(w: &Value) -> Vec<String> {
    let rate = w["health"]["successRate24h"].as_f64().map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
    let events: Vec<&str> = w["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let optional = |v: &Value| v.as_str().filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
    vec![
        text(&w["id"]),
        optional(&w["name"]),
        optional(&w["group"]),
        w["enabled"].as_bool().map_or("-", |e| if e { "yes" } else { "no" }).to_owned(),
        w["health"]["requests24h"].as_u64().map_or("-".into(), |n| n.to_string()),
        rate,
        text(&w["url"]),
        events.join(","),
    ]
}

/// One row of `webhooks deliveries`.
fn delivery_row(d: &Value) -> Vec<String> {
    vec![
        local_time(d["createdAt"].as_str().unwrap_or("")),
        text(&d["event"]),
        // Whose event: the tunnel's id, or the token's public id (`tok_…`).
        d["payload"]["Id"].as_str().map_or_else(|| "-".to_owned(), clean),
        text(&d["status"]),
        d["attempts"].as_u64().map_or("-".into(), |n| n.to_string()),
        d["lastResponseStatus"].as_u64().map_or("-".into(), |s| s.to_string()),
        delivery_detail(d),
    ]
}

/// Why the last attempt failed, else the start of the receiver's answer on one
/// line (so a 500's explanation shows), else nothing.
fn delivery_detail(d: &Value) -> String {
    let one_line = |s: &str| clean(&s.split_whitespace().collect::<Vec<_>>().join(" "));
    match (d["lastError"].as_str(), d["lastResponseBody"].as_str()) {
        (Some(err), _) if !err.trim().is_empty() => one_line(err),
        (_, Some(body)) => one_line(body),
        _ => String::new(),
    }
}

/// Calls the API and prints the webhook it answers with ([`show`], as
/// [`webhook_lines`]), and a signing key with the reminder that it is shown
/// only now.
async fn show_webhook(client: &ClientArgs, method: Method, path: &str, body: Option<&Value>) -> Result<()> {
    let lines = async |v: &Value| webhook_lines(&v["webhook"], v["signingKey"].as_str());
    let v = show(client, method, path, body, lines).await?;
    if !client.json && v["signingKey"].is_string() {
        eprintln!("\nThe signing key is shown only now: store it; receivers verify deliveries with it.");
    }
    Ok(())
}

/// A webhook object as `key: value` lines, with its signing key when the API
/// just issued one.
fn webhook_lines(w: &Value, signing_key: Option<&str>) -> Vec<String> {
    let list = |v: &Value| v.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ");
    let health = match (w["health"]["requests24h"].as_u64(), w["health"]["successRate24h"].as_f64()) {
        (Some(1), Some(rate)) => format!("1 delivery in 24 h, {:.0}% succeeded", rate * 100.0),
        (Some(n), Some(rate)) if n > 0 => format!("{n} deliveries in 24 h, {:.0}% succeeded", rate * 100.0),
        _ => "no deliveries in 24 h".to_owned(),
    };
    let mut fields = vec![
        ("id", text(&w["id"])),
        ("name", text(&w["name"])),
        ("url", text(&w["url"])),
        ("events", list(&w["events"])),
        ("group", w["group"].as_str().map_or_else(|| "- (every group)".to_owned(), clean)),
        ("enabled", if w["enabled"] == true { "yes" } else { "no (paused)" }.to_owned()),
    ];
    let headers = w["customHeaders"].as_object().filter(|h| !h.is_empty());
    match headers {
        None => fields.push(("headers", "-".to_owned())),
        Some(h) => {
            fields.extend(h.iter().map(|(k, v)| ("header", clean(&format!("{k}: {}", v.as_str().unwrap_or(""))))))
        }
    }
    fields.push(("health", health));
    fields.push(("created", full_time(w["createdAt"].as_str().unwrap_or(""))));
    fields.push(("updated", full_time(w["updatedAt"].as_str().unwrap_or(""))));
    if let Some(key) = signing_key {
        fields.push(("signing key", clean(key)));
    }
    table::fields(&fields)
}

/// Runs a `webhooks` subcommand.
pub async fn run(cmd: WebhooksCommand) -> Result<()> {
    match cmd {
        WebhooksCommand::List(ClientOnly { client }) => {
            let v = api(&client)?.list("/api/webhooks", "webhooks").await?;
            if client.json {
                println!("{v}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["webhooks"].as_array().into_iter().flatten().map(list_row).collect();
            if rows.is_empty() {
                eprintln!(
                    "No webhooks yet: `{} webhooks create --url URL --events all{}` adds one.",
                    crate::own_command(),
                    crate::server_option()
                );
                return Ok(());
            }
            let columns = [
                ("ID", Align::Left),
                ("NAME", Align::Left),
                ("GROUP", Align::Left),
                ("ENABLED", Align::Left),
                ("REQS/24H", Align::Right),
                ("SUCCESS", Align::Right),
                ("URL", Align::Left),
                ("EVENTS", Align::Left),
            ];
            for line in table::render(&columns, &rows, None) {
                println!("{line}");
            }
        }
        WebhooksCommand::Get(WebhookId { id, client }) => {
            show_webhook(&client, Method::GET, &format!("/api/webhooks/{id}"), None).await?;
        }
        WebhooksCommand::Create { url, events, disabled, fields, client } => {
            let mut body = Map::new();
            body.insert("url".into(), Value::String(url));
            body.insert("events".into(), events_json(&events)?);
            if disabled {
                body.insert("enabled".into(), Value::Bool(false));
            }
            fields_json(fields, &mut body)?;
            show_webhook(&client, Method::POST, "/api/webhooks", Some(&Value::Object(body))).await?;
        }
        WebhooksCommand::Update { id, url, events, enable, disable, no_group, no_headers, fields, client } => {
            let mut body = Map::new();
            if let Some(url) = url {
                body.insert("url".into(), Value::String(url));
            }
            if let Some(events) = events {
                body.insert("events".into(), events_json(&events)?);
            }
            if enable || disable {
                body.insert("enabled".into(), Value::Bool(enable));
            }
            if no_group {
                body.insert("group".into(), Value::Null);
            }
            if no_headers {
                body.insert("customHeaders".into(), Value::Object(Map::new()));
            }
            fields_json(fields, &mut body)?;
            if body.is_empty() {
                usage!(
                    "nothing to update: pass --url, --events, --name, --group, --no-group, --header, --no-headers, \
                     --enable or --disable"
                );
            }
            show_webhook(&client, Method::PATCH, &format!("/api/webhooks/{id}"), Some(&Value::Object(body))).await?;
        }
        WebhooksCommand::Delete(WebhookId { id, client }) => {
            let done = async |_: &Value| vec![format!("Deleted webhook {id} and its delivery log.")];
            show(&client, Method::DELETE, &format!("/api/webhooks/{id}"), None, done).await?;
        }
        WebhooksCommand::Test(WebhookId { id, client }) => {
            let v = api(&client)?.call(Method::POST, &format!("/api/webhooks/{id}/test"), Some(&json!({}))).await?;
            let results = v["results"].as_array().map_or(&[][..], Vec::as_slice);
            if client.json {
                println!("{v}");
            } else {
                for r in results {
                    let outcome = match (r["status"].as_u64(), r["error"].as_str()) {
                        (Some(status), _) => format!("HTTP {status}"),
                        (None, Some(err)) => clean(err),
                        (None, None) => "no answer".to_owned(),
                    };
                    let mark = if r["ok"] == true { "ok  " } else { "FAIL" };
                    let ms = r["durationMs"].as_u64().unwrap_or(0);
                    println!("{mark} {:<22} {outcome} ({ms} ms)", r["event"].as_str().unwrap_or(""));
                }
            }
            // A script running `webhooks test` learns from the exit code whether the receiver works.
            let failed = results.iter().filter(|r| r["ok"] != true).count();
            if failed > 0 {
                bail!("{failed} of {} test deliveries failed", results.len());
            }
        }
        WebhooksCommand::Deliveries(WebhookId { id, client }) => {
            let v = api(&client)?.list(&format!("/api/webhooks/{id}/deliveries"), "deliveries").await?;
            if client.json {
                println!("{v}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["deliveries"].as_array().into_iter().flatten().map(delivery_row).collect();
            if rows.is_empty() {
                eprintln!(
                    "No deliveries in the last 24 hours (`{} webhooks test {id}{}` sends one).",
                    crate::own_command(),
                    crate::server_option()
                );
                return Ok(());
            }
            let columns = [
                ("TIME", Align::Left),
                ("EVENT", Align::Left),
                ("SUBJECT", Align::Left),
                ("STATUS", Align::Left),
                ("ATTEMPTS", Align::Right),
                ("HTTP", Align::Right),
                ("DETAIL", Align::Left),
            ];
            for line in table::render(&columns, &rows, Some(terminal_width())) {
                println!("{line}");
            }
            if v["truncated"] == true {
                eprintln!("(the newest {} of the last 24 hours; `webhooks list` counts them all)", rows.len());
            }
        }
        WebhooksCommand::RegenerateSigningKey(WebhookId { id, client }) => {
            let path = format!("/api/webhooks/{id}/regenerate-signing-key");
            show_webhook(&client, Method::POST, &path, None).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_reads_as_key_value_lines() {
        let w = json!({
            "id": "wh_1", "name": "ops", "url": "https://ops.example/hook", "events": ["tunnel.connected", "token.connected"],
            "group": null, "enabled": false, "customHeaders": {"X-Team": "ops"},
            "createdAt": "2026-11-22T10:00:00Z", "updatedAt": "2026-11-22T10:00:00.5Z",
            "health": {"requests24h": 4, "successRate24h": 0.75},
        });
        let lines = webhook_lines(&w, Some("whsec_abc"));
        for expected in [
            "id:          wh_1",
            "url:         https://ops.example/hook",
            "events:      tunnel.connected, token.connected",
            "group:       - (every group)",
            "enabled:     no (paused)",
            "header:      X-Team: ops",
            "health:      4 deliveries in 24 h, 75% succeeded",
            "signing key: whsec_abc",
        ] {
            assert!(lines.iter().any(|l| l == expected), "{expected:?} in {lines:#?}");
        }
        let lines = webhook_lines(&json!({"customHeaders": {}, "health": {"requests24h": 0}}), None);
        assert!(
            lines.iter().any(|l| l == "headers: -") && !lines.iter().any(|l| l.starts_with("signing")),
            "{lines:#?}"
        );
    }
}
