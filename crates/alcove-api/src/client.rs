//! A blocking client for the API, used by `alcove fn ...`.

use crate::wire::DeployBody;
use serde_json::Value;
use std::time::Duration;
use ureq::Agent;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not reach the alcove daemon at {server} (start it with `alcove serve`, or point --server or $ALCOVE_SERVER at it)")]
    Unreachable {
        server: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{message} [{code}]")]
    Api {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    #[error("the daemon's answer could not be read: {0}")]
    BadResponse(String),
    #[error("{0:?} is not a valid name or id: use letters, digits, '-' and '_'")]
    BadName(String),
}

/// A name or id checked to be safe as one path segment.
pub(crate) fn segment(name: &str) -> Result<&str, ClientError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(ClientError::BadName(name.to_owned()))
    }
}

/// The answer to a synchronous invoke: the handler's response on success,
/// the API's error (with the invocation record) otherwise.
#[derive(Debug)]
pub struct InvokeOutcome {
    pub status: u16,
    pub invocation: Option<String>,
    pub response: Vec<u8>,
    /// The error object, when the invocation did not succeed.
    pub error: Option<Value>,
}

/// Server-sent events as they arrive: the JSON of each `data:` line.
pub struct EventStream {
    lines: std::io::Lines<std::io::BufReader<Box<dyn std::io::Read + Send>>>,
}

impl Iterator for EventStream {
    type Item = Result<Value, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(line) => line,
                Err(e) => return Some(Err(ClientError::BadResponse(e.to_string()))),
            };
            // `event:` names repeat what the JSON says; comments keep the line alive.
            if let Some(data) = line.strip_prefix("data:") {
                return Some(
                    serde_json::from_str(data.trim_start()).map_err(|e| {
                        ClientError::BadResponse(format!("an event is not JSON: {e}"))
                    }),
                );
            }
        }
    }
}

pub struct Client {
    pub(crate) agent: Agent,
    pub(crate) server: String,
    pub(crate) token: Option<String>,
}

/// A status, the headers (lower-case names) and the body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

const MAX_ANSWER: u64 = 64 << 20;

impl Client {
    /// A client for the daemon at `server` (such as http://127.0.0.1:8480).
    pub fn new(server: &str, token: Option<String>) -> Self {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into();
        Client {
            agent,
            server: server.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The daemon's URL, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Answer, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            server: self.server.clone(),
            source,
        };
        let url = self.url(path);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if !query.is_empty() {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.uri(format!("{url}?{}", q.join("&")));
        }
        let request = request
            .body(body.unwrap_or_default().to_vec())
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let mut response = self.agent.run(request).map_err(unreachable)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(unreachable)?;
        Ok((status, headers, bytes))
    }

    pub(crate) fn json(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Value, ClientError> {
        let (status, _, bytes) = self.send(method, path, query, body)?;
        if status == 204 {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::BadResponse(format!(
                "HTTP {status}, not JSON ({e}): is {} an alcove daemon?",
                self.server
            ))
        })?;
        if status >= 400 {
            return Err(api_error(status, value));
        }
        Ok(value)
    }

    /// Whether the server proves it holds `token` (for a fresh nonce), asked
    /// by a client made without a token, before the token is sent anywhere.
    pub fn proves_token(&self, token: &str) -> Result<bool, ClientError> {
        let nonce = alcove_sys::process::random_id();
        let (status, _, bytes) = self.send("GET", "/healthz", &[("proof", nonce.clone())], None)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let expected = crate::auth::token_proof(token, &nonce);
        Ok(status == 200 && value["proof"].as_str() == Some(expected.as_str()))
    }

    pub fn deploy(&self, body: &DeployBody) -> Result<Value, ClientError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.json("POST", "/v1/functions", &[], Some(&bytes))
    }

    /// Changes settings of `name` as a new version (`PATCH`); `change` is a
    /// JSON object of the fields to change.
    pub fn configure(&self, name: &str, change: &Value) -> Result<Value, ClientError> {
        let bytes =
            serde_json::to_vec(change).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.json(
            "PATCH",
            &format!("/v1/functions/{}", segment(name)?),
            &[],
            Some(&bytes),
        )
    }

    /// The names of `name`'s secrets.
    pub fn secrets(&self, name: &str) -> Result<Value, ClientError> {
        self.json(
            "GET",
            &format!("/v1/functions/{}/secrets", segment(name)?),
            &[],
            None,
        )
    }

    pub fn set_secret(&self, name: &str, secret: &str, value: &[u8]) -> Result<Value, ClientError> {
        self.json(
            "PUT",
            &format!(
                "/v1/functions/{}/secrets/{}",
                segment(name)?,
                segment(secret)?
            ),
            &[],
            Some(value),
        )
    }

    pub fn remove_secret(&self, name: &str, secret: &str) -> Result<Value, ClientError> {
        self.json(
            "DELETE",
            &format!(
                "/v1/functions/{}/secrets/{}",
                segment(name)?,
                segment(secret)?
            ),
            &[],
            None,
        )
    }

    pub fn list(&self) -> Result<Value, ClientError> {
        self.json("GET", "/v1/functions", &[], None)
    }

    pub fn show(&self, name: &str) -> Result<Value, ClientError> {
        self.json(
            "GET",
            &format!("/v1/functions/{}", segment(name)?),
            &[],
            None,
        )
    }

    /// Removes a function; with `force`, cancels its invocations in flight
    /// first (without, the daemon refuses while there are any).
    pub fn remove(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let query: Vec<(&str, String)> = if force {
            vec![("force", "true".into())]
        } else {
            Vec::new()
        };
        self.json(
            "DELETE",
            &format!("/v1/functions/{}", segment(name)?),
            &query,
            None,
        )
        .map(drop)
    }

    /// The event stream (`GET /v1/events`), of `function` if given: each
    /// item is one event's JSON. Blocks between events; ends when the
    /// daemon closes the stream.
    pub fn events(&self, function: Option<&str>) -> Result<EventStream, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            server: self.server.clone(),
            source,
        };
        let mut url = self.url("/v1/events");
        if let Some(f) = function {
            url.push_str(&format!("?function={}", segment(f)?));
        }
        let mut request = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Vec::new())
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let response = self.agent.run(request).map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status >= 400 {
            let bytes = body
                .with_config()
                .limit(MAX_ANSWER)
                .read_to_vec()
                .map_err(unreachable)?;
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, value));
        }
        Ok(EventStream {
            lines: std::io::BufRead::lines(std::io::BufReader::new(
                Box::new(body.into_reader()) as Box<dyn std::io::Read + Send>
            )),
        })
    }

    /// Starts learning `name`'s policy from its next invocations.
    pub fn learn(&self, name: &str, body: &Value) -> Result<Value, ClientError> {
        let body = body.to_string();
        self.json(
            "POST",
            &format!("/v1/functions/{}/learn", segment(name)?),
            &[],
            Some(body.as_bytes()),
        )
    }

    /// `name`'s learned profile (GET) or stops learning (DELETE).
    pub fn learned(&self, name: &str, stop: bool) -> Result<Value, ClientError> {
        let method = if stop { "DELETE" } else { "GET" };
        self.json(
            method,
            &format!("/v1/functions/{}/learn", segment(name)?),
            &[],
            None,
        )
    }

    /// The daemon's eBPF monitor: loaded, attached programs, sandboxes watched.
    pub fn monitor(&self) -> Result<Value, ClientError> {
        self.json("GET", "/v1/monitor", &[], None)
    }

    /// The invocations in flight (of `function`, if given), oldest first.
    pub fn running(&self, function: Option<&str>) -> Result<Value, ClientError> {
        let query: Vec<(&str, String)> = match function {
            Some(f) => vec![("function", segment(f)?.to_owned())],
            None => Vec::new(),
        };
        self.json("GET", "/v1/invocations", &query, None)
    }

    /// Cancels an invocation in flight; returns its record.
    pub fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        self.json(
            "DELETE",
            &format!("/v1/invocations/{}", segment(id)?),
            &[],
            None,
        )
    }

    pub fn rollback(&self, name: &str, version: u32) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "version": version }).to_string();
        self.json(
            "POST",
            &format!("/v1/functions/{}/rollback", segment(name)?),
            &[],
            Some(body.as_bytes()),
        )
    }

    pub fn logs(&self, name: &str, limit: u32) -> Result<Value, ClientError> {
        self.json(
            "GET",
            &format!("/v1/functions/{}/logs", segment(name)?),
            &[("limit", limit.to_string())],
            None,
        )
    }

    /// A page of a function's invocations: `status` (ok, failed or one
    /// status) and the page after invocation `after`, if given.
    pub fn logs_page(
        &self,
        name: &str,
        limit: u32,
        status: Option<&str>,
        after: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(status) = status {
            query.push(("status", status.to_owned()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        self.json(
            "GET",
            &format!("/v1/functions/{}/logs", segment(name)?),
            &query,
            None,
        )
    }

    pub fn invocation(&self, id: &str) -> Result<Value, ClientError> {
        self.json(
            "GET",
            &format!("/v1/invocations/{}", segment(id)?),
            &[],
            None,
        )
    }

    /// Queues an invocation; returns its record (with its id) at once.
    pub fn invoke_async(
        &self,
        name: &str,
        version: Option<u32>,
        retries: u32,
        data: &[u8],
    ) -> Result<Value, ClientError> {
        let mut query = vec![
            ("async", "true".to_owned()),
            ("retries", retries.to_string()),
        ];
        if let Some(v) = version {
            query.push(("version", v.to_string()));
        }
        self.json(
            "POST",
            &format!("/v1/functions/{}/invoke", segment(name)?),
            &query,
            Some(data),
        )
    }

    /// Runs an invocation and waits for it. A handler that fails is an
    /// `Ok` outcome with `error` set; only API errors (no such function,
    /// 429...) are `Err`.
    pub fn invoke(
        &self,
        name: &str,
        version: Option<u32>,
        data: &[u8],
    ) -> Result<InvokeOutcome, ClientError> {
        let query: Vec<(&str, String)> = version
            .map(|v| ("version", v.to_string()))
            .into_iter()
            .collect();
        let (status, headers, bytes) = self.send(
            "POST",
            &format!("/v1/functions/{}/invoke", segment(name)?),
            &query,
            Some(data),
        )?;
        let invocation = headers
            .iter()
            .find(|(k, _)| k == "x-alcove-invocation")
            .map(|(_, v)| v.clone());
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        // An `http` function's own status (a 404 it chose) is its answer, not
        // alcove's error: those carry x-alcove-error.
        let handler_status = invocation.is_some()
            && header("x-alcove-error").is_none()
            && header("x-alcove-exit-code") == Some("0");
        if status == 200 || handler_status {
            return Ok(InvokeOutcome {
                status,
                invocation,
                response: bytes,
                error: None,
            });
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::BadResponse(format!("HTTP {status}, not JSON ({e})")))?;
        if invocation.is_none() {
            return Err(api_error(status, value));
        }
        Ok(InvokeOutcome {
            status,
            invocation,
            response: Vec::new(),
            error: value.get("error").cloned(),
        })
    }
}

pub(crate) fn api_error(status: u16, body: Value) -> ClientError {
    let field = |k: &str| {
        body.pointer(&format!("/error/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (code, message) = (field("code"), field("message"));
    if code.is_empty() {
        return ClientError::BadResponse(format!("HTTP {status} without an error object: {body}"));
    }
    ClientError::Api {
        status,
        code,
        message,
        body,
    }
}
