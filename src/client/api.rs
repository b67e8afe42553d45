//! A typed client for the REST API, used by the CLI and the tests.

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

/// Errors talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached.
    #[error("cannot reach the hookway server at {url}: {}{}", root_cause(error), reach_hint(url, error))]
    Unreachable {
        /// Base URL used.
        url: String,
        /// Underlying error. Not a `source`: the message names its root
        /// cause, and the layers between (reqwest's "error sending request
        /// for url (…)", hyper's "client error (Connect)") only repeated the
        /// URL in every retry line.
        error: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `error` field of the answer, or its body.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

/// The innermost cause of `err` ("Connection refused (os error 111)"), or
/// that it timed out.
fn root_cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "no answer in time".into();
    }
    // (`err` itself when it has no cause.)
    crate::error_sources(err).last().map(ToString::to_string).unwrap_or_default()
}

/// What to try: nothing listens at the URL (the server is not running, or
/// the URL is another one's: the default when `--server` was forgotten), or
/// an `https://` server URL met a server that answered in plain HTTP
/// (hookway's listener is plain HTTP unless a TLS terminator stands in front
/// of it): rustls reports "corrupt message".
fn reach_hint(url: &str, err: &reqwest::Error) -> &'static str {
    let chain = crate::error_chain(err);
    if err.is_connect() && chain.contains("Connection refused") {
        return " (nothing listens there: is the server running, and is --server or HOOKWAY_SERVER its URL?)";
    }
    if !url.starts_with("https://") {
        return "";
    }
    if chain.contains("InvalidContentType") {
        " (the server answered in plain HTTP: use an http:// URL)"
    } else if chain.contains("UnknownIssuer") {
        // As QUIC's refusal says: a private CA is trusted through the variables
        // rustls-native-certs reads.
        " (a certificate from a private CA: set SSL_CERT_FILE to a file holding that CA, or SSL_CERT_DIR)"
    } else {
        ""
    }
}

/// `key` without the blanks around it (a key pasted with its line break), or
/// why it cannot be an API key: a header carries only visible ASCII, spaces
/// and tabs, so a key with anything else inside could never be sent, and
/// would have failed as a network error ("failed to parse header value") or
/// a refused key. (Spaces inside, as in a passphrase, are sent as they are.)
pub fn clean_api_key(key: &str) -> Result<&str, String> {
    let key = key.trim();
    match key.char_indices().find(|&(_, c)| !(c.is_ascii_graphic() || c == ' ' || c == '\t')) {
        None => Ok(key),
        Some((at, c)) => {
            let what = match c {
                '\n' | '\r' => "a line break".to_owned(),
                c if c.is_control() => format!("a control character (U+{:04X})", u32::from(c)),
                c => format!("'{c}', which is not ASCII"),
            };
            Err(format!("the API key holds {what} at character {}: a header cannot carry it", at + 1))
        }
    }
}

/// `GET /api/info`: how to reach the QUIC listener and whom to trust.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// Server version.
    pub version: String,
    /// Frame protocol version.
    pub protocol_version: u32,
    /// Public base URL.
    pub public_url: String,
    /// Host-routing domain.
    pub domain: Option<String>,
    /// QUIC port.
    pub quic_port: u16,
    /// Explicit QUIC address, if configured.
    pub quic_addr: Option<String>,
    /// SHA-256 of a self-signed certificate, to pin.
    pub cert_fingerprint: Option<String>,
    /// Whether the server captures requests for inspection (absent from an
    /// older server, which always did).
    #[serde(default = "captures")]
    pub capture: bool,
}

fn captures() -> bool {
    true
}

/// `POST /api/tunnels` answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedTunnel {
    /// The tunnel object.
    pub tunnel: TunnelSummary,
    /// Path-based public URL.
    pub tunnel_url: String,
    /// WebSocket URL for legacy clients.
    pub ws_url: String,
    /// The auth token (shown once).
    pub auth_token: String,
    /// Host-based URL, when the server has a domain.
    pub host_url: Option<String>,
}

/// `POST /api/tunnels/{id}/regenerate-token` answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The new auth token (shown once).
    pub auth_token: String,
    /// WebSocket URL carrying it.
    pub ws_url: String,
    /// The tunnel (absent from an older server's answer).
    #[serde(default)]
    pub tunnel: Option<TunnelSummary>,
}

/// The fields of a tunnel object the client needs.
#[derive(Debug, Clone, Deserialize)]
pub struct TunnelSummary {
    /// `tun_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Subdomain.
    pub subdomain: String,
}

/// REST API client.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl ApiClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, key: Option<String>) -> Self {
        crate::quic::tls::install_default_provider();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("reqwest client builds with the installed provider");
        Self { http, base: base.trim_end_matches('/').to_owned(), key }
    }

    /// The server base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the base URL has a path (a server behind a proxy's prefix).
    fn has_path(&self) -> bool {
        reqwest::Url::parse(&self.base).is_ok_and(|u| u.path() != "/")
    }

    /// Sends a request and returns the JSON answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|error| ApiError::Unreachable { url: self.base.clone(), error })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|error| ApiError::Unreachable { url: self.base.clone(), error })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = match value["error"].as_str() {
                Some(error) => error.to_owned(),
                // Not our API's answer: another web server at that address
                // (a typo in the URL), or a proxy's error page.
                None => {
                    let text = String::from_utf8_lossy(&bytes);
                    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    let said = if text.is_empty() {
                        " (an empty answer)".to_owned()
                    } else {
                        format!(": {:?}", crate::wsjson::clip(&text, 100))
                    };
                    format!(
                        "{} did not answer as a hookway server{said}; check --server or HOOKWAY_SERVER, and any \
                         proxy in front of the server",
                        self.base
                    )
                }
            };
            let message = match (status.as_u16(), value["error"].as_str()) {
                (401, Some("invalid API key")) => format!(
                    "{message}: the server at {} knows no such key (it prints one on its first start; `hookway \
                     keys create` on its machine makes more)",
                    self.base
                ),
                // Our server, but the URL's path is not where it serves.
                (404, Some(error)) if error.starts_with("no route for") && self.has_path() => format!(
                    "{message}: check the path in --server or HOOKWAY_SERVER (the server has no API under {})",
                    self.base
                ),
                _ => message,
            };
            return Err(ApiError::Status { status: status.as_u16(), message });
        }
        if value.is_null() {
            return Err(ApiError::Decode(format!("{path}: answer is not JSON")));
        }
        Ok(value)
    }

    /// [`call`](Self::call) for a listing: the answer must hold a `field`
    /// array. Another HTTP service at the server URL that answers JSON would
    /// otherwise read as an empty list ("No tunnels yet").
    pub async fn list(&self, path: &str, field: &str) -> Result<Value, ApiError> {
        let value = self.call(Method::GET, path, None).await?;
        if !value[field].is_array() {
            return Err(self.not_ours(format!("{path}: no `{field}` list in the answer")));
        }
        Ok(value)
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, value: Value) -> Result<T, ApiError> {
        serde_json::from_value(value).map_err(|e| self.not_ours(e.to_string()))
    }

    /// An answer not of the API's shape: `what` was wrong, and the server
    /// URL may name another service.
    fn not_ours(&self, what: String) -> ApiError {
        ApiError::Decode(format!("{what} (is {} a hookway server?)", self.base))
    }

    /// `GET /api/info`.
    pub async fn info(&self) -> Result<ServerInfo, ApiError> {
        self.typed(self.call(Method::GET, "/api/info", None).await?)
    }

    /// `POST /api/tunnels`.
    pub async fn create_tunnel(&self, name: &str, subdomain: Option<&str>) -> Result<CreatedTunnel, ApiError> {
        self.create_tunnel_in(name, subdomain, None, serde_json::Map::new()).await
    }

    /// `POST /api/tunnels`, in `group` (for webhooks that subscribe to one),
    /// with `more` fields (its inbound options: `basicAuth`, …).
    pub async fn create_tunnel_in(
        &self,
        name: &str,
        subdomain: Option<&str>,
        group: Option<&str>,
        more: serde_json::Map<String, Value>,
    ) -> Result<CreatedTunnel, ApiError> {
        let mut body = more;
        body.insert("name".into(), Value::String(name.to_owned()));
        if let Some(s) = subdomain {
            body.insert("subdomain".into(), Value::String(s.to_owned()));
        }
        if let Some(g) = group {
            body.insert("group".into(), Value::String(g.to_owned()));
        }
        let body = Value::Object(body);
        self.typed(self.call(Method::POST, "/api/tunnels", Some(&body)).await?)
    }

    /// `POST /api/tunnels/{id}/regenerate-token`, returning the new token.
    pub async fn regenerate_token(&self, id: &str) -> Result<String, ApiError> {
        Ok(self.regenerate_credentials(id).await?.auth_token)
    }

    /// `POST /api/tunnels/{id}/regenerate-token`: the new token and `wsUrl`.
    pub async fn regenerate_credentials(&self, id: &str) -> Result<Credentials, ApiError> {
        self.typed(self.call(Method::POST, &format!("/api/tunnels/{id}/regenerate-token"), None).await?)
    }

    /// `GET /api/tunnels/{id}`.
    pub async fn tunnel(&self, id: &str) -> Result<TunnelSummary, ApiError> {
        let mut v = self.call(Method::GET, &format!("/api/tunnels/{id}"), None).await?;
        self.typed(v["tunnel"].take())
    }
}
