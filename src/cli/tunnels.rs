//! What the `tunnels` verbs print for a person: `key: value` lines for one
//! tunnel and a sentence for an action. `--json` prints the API's JSON as it
//! came, for scripts; pretty-printed JSON was what a person got before, which
//! buried the one line they wanted (the URL, the new token).

use serde_json::Value;

use super::inspect_cli::records::{clean, full_time, local_time_s, text};
use super::table::{self, Align};

/// Lines for an API answer that carries a tunnel (get, create, update,
/// regenerate-token, status), then what came with it: its URLs, a new auth
/// token, the live session. `public_url` is the server's public base URL,
/// for the tunnel URL of answers that do not carry one.
pub fn tunnel_lines(v: &Value, public_url: &str) -> Vec<String> {
    let t = &v["tunnel"];
    let mut fields = vec![("id", text(&t["id"])), ("name", text(&t["name"]))];
    if t["subdomain"].is_string() {
        fields.push(("subdomain", text(&t["subdomain"])));
    }
    if t["status"].is_string() {
        fields.push(("status", text(&t["status"])));
    }
    if let Some(n) = t["totalRequests"].as_u64() {
        fields.push(("requests", n.to_string()));
    }
    if t["group"].is_string() {
        fields.push(("group", text(&t["group"])));
    }
    if t["captureBodies"] == false {
        fields.push(("bodies", "not captured (method, path, headers and sizes only)".to_owned()));
    }
    if t["basicAuth"].is_object() {
        let user = t["basicAuth"]["username"].as_str().unwrap_or_default();
        let who = if user.is_empty() { "a password".to_owned() } else { format!("user {}", clean(user)) };
        fields.push(("basic auth", format!("required ({who})")));
    }
    if let Some(kind) = t["verification"]["type"].as_str() {
        fields.push(("verification", format!("{} handshakes answered by the server", clean(kind))));
    }
    if let (Some(n), Some(secs)) = (t["rateLimit"]["requests"].as_u64(), t["rateLimit"]["windowSeconds"].as_u64()) {
        fields.push(("rate limit", format!("bursts of {n}, then {n} per {secs} s on average (then 429)")));
    }
    if let Some(status) = t["offlineReply"]["status"].as_u64() {
        fields.push(("offline reply", format!("{status}, and the request recorded (while no client is connected)")));
    }
    if t["createdAt"].is_string() {
        // A whole tunnel object: one without `lastConnectedAt` never connected.
        let last = t["lastConnectedAt"].as_str().map_or_else(|| "never".to_owned(), full_time);
        fields.push(("last connected", last));
        fields.push(("created", full_time(t["createdAt"].as_str().unwrap_or(""))));
    }
    let live = &v["liveStatus"];
    if live.is_object() {
        fields.push(("connected", connected(live)));
    }
    match (v["tunnelUrl"].as_str(), t["subdomain"].as_str()) {
        (Some(url), _) => fields.push(("url", clean(url))),
        (None, Some(sub)) => fields.push(("url", format!("{}/t/{}", public_url.trim_end_matches('/'), clean(sub)))),
        (None, None) => {}
    }
    if v["hostUrl"].is_string() {
        fields.push(("host url", text(&v["hostUrl"])));
    }
    if v["wsUrl"].is_string() {
        fields.push(("ws url", text(&v["wsUrl"])));
    }
    if v["authToken"].is_string() {
        fields.push(("auth token", text(&v["authToken"])));
    }
    table::fields(&fields)
}

/// `tunnels list` as a table; nothing for an empty list.
pub fn list_lines(v: &Value) -> Vec<String> {
    let rows: Vec<Vec<String>> = v["tunnels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                text(&t["id"]),
                text(&t["subdomain"]),
                text(&t["status"]),
                t["totalRequests"].as_u64().unwrap_or(0).to_string(),
                t["lastConnectedAt"].as_str().map_or_else(|| "never".to_owned(), local_time_s),
                text(&t["name"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Vec::new();
    }
    let columns = [
        ("ID", Align::Left),
        ("SUBDOMAIN", Align::Left),
        ("STATUS", Align::Left),
        ("REQUESTS", Align::Right),
        ("LAST CONNECTED", Align::Left),
        ("NAME", Align::Left),
    ];
    table::render(&columns, &rows, None)
}

/// seed 001's `liveStatus` as one phrase.
fn connected(live: &Value) -> String {
    if live["connected"] != true {
        return "no".to_owned();
    }
    let mut s = "yes".to_owned();
    if let Some(at) = live["connectedAt"].as_str() {
        s += &format!(", since {}", full_time(at));
    }
    if let Some(ip) = live["clientIp"].as_str() {
        s += &format!(", from {}", clean(ip));
    }
    if let Some(n) = live["requestsInSession"].as_u64() {
        s += &format!(", {n} request{} in this session", if n == 1 { "" } else { "s" });
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_created_tunnel_shows_its_url_and_token() {
        let v = json!({
            "tunnel": {"id": "tun_1", "name": "Dev", "subdomain": "cool-sunset-x7kf", "status": "disconnected",
                       "totalRequests": 0, "createdAt": "2026-11-23T20:44:12Z"},
            "tunnelUrl": "https://edge.example/t/cool-sunset-x7kf",
            "hostUrl": "https://cool-sunset-x7kf.edge.example",
            "wsUrl": "wss://edge.example/tunnels/cool-sunset-x7kf/ws?tunnelId=tun_1&token=hwt_a",
            "authToken": "hwt_a",
        });
        let lines = tunnel_lines(&v, "http://ignored");
        for expected in [
            "id:             tun_1",
            "subdomain:      cool-sunset-x7kf",
            "status:         disconnected",
            "requests:       0",
            "last connected: never",
            "url:            https://edge.example/t/cool-sunset-x7kf",
            "host url:       https://cool-sunset-x7kf.edge.example",
            "auth token:     hwt_a",
        ] {
            assert!(lines.iter().any(|l| l == expected), "{expected:?} not in {lines:#?}");
        }
        assert!(!lines.iter().any(|l| l.starts_with("bodies") || l.starts_with("group")), "{lines:#?}");
    }

    #[test]
    fn a_fetched_tunnel_gets_its_url_from_the_server_address() {
        let v = json!({"tunnel": {"id": "tun_1", "name": "Dev", "subdomain": "abc", "status": "connected",
                                  "totalRequests": 3, "lastConnectedAt": "2026-11-23T20:44:12Z",
                                  "createdAt": "2026-11-23T20:00:00Z", "group": "ops", "captureBodies": false}});
        let lines = tunnel_lines(&v, "http://127.0.0.1:8080/");
        assert!(lines.contains(&"url:            http://127.0.0.1:8080/t/abc".to_owned()), "{lines:#?}");
        assert!(lines.contains(&"group:          ops".to_owned()), "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("bodies:         not captured")), "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("never")), "{lines:#?}");
        // Lines have room for the offset, which says what zone the time is in.
        let created = lines.iter().find(|l| l.starts_with("created:")).expect("a created line");
        let offset = created.rsplit(' ').next().unwrap();
        assert!(offset.len() == 6 && offset.starts_with(['+', '-']) && offset.as_bytes()[3] == b':', "{created}");
    }

    #[test]
    fn inbound_options_are_shown_without_secrets() {
        let v = json!({"tunnel": {"id": "tun_1", "name": "Dev", "basicAuth": {"username": "alice"},
                                  "verification": {"type": "fitbit"},
                                  "rateLimit": {"requests": 100, "windowSeconds": 10}}});
        let lines = tunnel_lines(&v, "http://127.0.0.1:8080");
        let says = |lines: &[String], key: &str, value: &str| {
            lines.iter().any(|l| l.split_once(':').is_some_and(|(k, v)| k == key && v.trim() == value))
        };
        for (key, value) in [
            ("basic auth", "required (user alice)"),
            ("verification", "fitbit handshakes answered by the server"),
            ("rate limit", "bursts of 100, then 100 per 10 s on average (then 429)"),
        ] {
            assert!(says(&lines, key, value), "{key}: {lines:#?}");
        }
        let v = json!({"tunnel": {"id": "tun_1", "name": "Dev", "basicAuth": {"username": ""}}});
        assert!(says(&tunnel_lines(&v, ""), "basic auth", "required (a password)"));
    }

    #[test]
    fn the_list_lines_up_whatever_the_subdomain_length() {
        let long = "a".repeat(63);
        let v = json!({"tunnels": [
            {"id": "tun_1", "name": "one", "subdomain": long, "status": "connected", "totalRequests": 12,
             "lastConnectedAt": "2026-11-23T20:44:12Z"},
            {"id": "tun_2", "name": "two", "subdomain": "abc", "status": "disconnected", "totalRequests": 3},
        ]});
        let lines = list_lines(&v);
        assert_eq!(lines.len(), 3);
        let name_at = lines[0].find("NAME").unwrap();
        assert!(lines[1][name_at..].starts_with("one") && lines[2][name_at..].starts_with("two"), "{lines:#?}");
        assert!(lines[2].contains(" never "), "{lines:#?}");
        assert!(list_lines(&json!({"tunnels": []})).is_empty());
    }

    #[test]
    fn live_status_reads_as_one_phrase() {
        let v = json!({
            "tunnel": {"id": "tun_1", "name": "Dev", "status": "connected"},
            "liveStatus": {"connected": true, "connectedAt": "2026-11-23T20:44:12Z", "clientIp": "127.0.0.1",
                           "requestsInSession": 1},
        });
        let lines = tunnel_lines(&v, "http://127.0.0.1:8080");
        let line = lines.iter().find(|l| l.starts_with("connected:")).expect("a connected line");
        assert!(line.ends_with(", from 127.0.0.1, 1 request in this session"), "{line}");
        assert!(!lines.iter().any(|l| l.starts_with("url")), "a status answer has no subdomain: {lines:#?}");
        let off = json!({"tunnel": {"id": "tun_1"}, "liveStatus": {"connected": false, "connectedAt": null}});
        assert!(tunnel_lines(&off, "").contains(&"connected: no".to_owned()));
    }
}
