//! The typed client's sandbox calls (`alcove sandbox ...`): JSON for the
//! resources, line-by-line NDJSON for streams, and files streamed both ways.

use crate::client::{api_error, segment, Client, ClientError};
use serde_json::Value;
use std::io::{BufRead, Read};

/// An NDJSON stream as it arrives: one JSON value per line.
pub struct Lines {
    lines: std::io::Lines<std::io::BufReader<Box<dyn Read + Send>>>,
}

impl Iterator for Lines {
    type Item = Result<Value, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(line) => line,
                Err(e) => return Some(Err(ClientError::BadResponse(e.to_string()))),
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&line).map_err(|e| {
                    ClientError::BadResponse(format!("a stream line is not JSON: {e}"))
                }),
            );
        }
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Another handle on the same daemon, sharing its connections (a thread
/// that writes a terminal's keystrokes while another reads its output).
impl Clone for Client {
    fn clone(&self) -> Self {
        Client {
            agent: self.agent.clone(),
            server: self.server.clone(),
            token: self.token.clone(),
        }
    }
}

impl Client {
    fn sandbox_path(id: &str, rest: &str) -> Result<String, ClientError> {
        Ok(format!("/v1/sandboxes/{}{rest}", segment(id)?))
    }

    pub fn create_sandbox(&self, body: &Value) -> Result<Value, ClientError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.json("POST", "/v1/sandboxes", &[], Some(&bytes))
    }

    /// Sandboxes whose metadata holds every `filter` pair (and in `state`).
    pub fn list_sandboxes(
        &self,
        filter: &[(String, String)],
        state: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        let keys: Vec<String> = filter
            .iter()
            .map(|(k, _)| format!("metadata.{}", encode(k)))
            .collect();
        for (key, (_, v)) in keys.iter().zip(filter) {
            query.push((key.as_str(), encode(v)));
        }
        if let Some(s) = state {
            query.push(("state", encode(s)));
        }
        self.json("GET", "/v1/sandboxes", &query, None)
    }

    /// `GET`, `DELETE` or `POST` on a sandbox or one of its actions (`rest`
    /// such as "" or "/pause"), with a JSON body for a POST.
    pub fn sandbox_call(
        &self,
        method: &str,
        id: &str,
        rest: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.json(
            method,
            &Self::sandbox_path(id, rest)?,
            &[],
            bytes.as_deref(),
        )
    }

    /// `GET /v1/sandbox-templates`, or `DELETE` of the template `name`.
    pub fn sandbox_templates(
        &self,
        method: &str,
        name: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = match name {
            Some(n) => format!("/v1/sandbox-templates/{}", segment(n)?),
            None => "/v1/sandbox-templates".into(),
        };
        self.json(method, &path, &[], None)
    }

    /// A file call with `?path=`.
    pub fn sandbox_file_call(
        &self,
        method: &str,
        id: &str,
        rest: &str,
        path: &str,
    ) -> Result<Value, ClientError> {
        self.json(
            method,
            &Self::sandbox_path(id, rest)?,
            &[("path", encode(path))],
            None,
        )
    }

    /// A streamed call: the lines as they come.
    pub fn sandbox_stream(
        &self,
        method: &str,
        id: &str,
        rest: &str,
        body: Option<&Value>,
    ) -> Result<Lines, ClientError> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::BadResponse(e.to_string()))?
            .unwrap_or_default();
        let reader = self.open(method, &Self::sandbox_path(id, rest)?, "", bytes)?;
        Ok(Lines {
            lines: std::io::BufReader::new(reader).lines(),
        })
    }

    /// Writes `bytes` to the stdin of command `pid` (its terminal, for one
    /// started with a pty), then closes it with `close` (^D on a terminal).
    pub fn write_stdin(
        &self,
        id: &str,
        pid: i32,
        bytes: &[u8],
        close: bool,
    ) -> Result<(), ClientError> {
        let query: &[(&str, String)] = if close {
            &[("close", String::from("true"))]
        } else {
            &[]
        };
        let path = Self::sandbox_path(id, &format!("/processes/{pid}/stdin"))?;
        self.json("POST", &path, query, Some(bytes)).map(drop)
    }

    /// Resizes the terminal of command `pid` (started with a pty).
    pub fn resize_pty(&self, id: &str, pid: i32, cols: u16, rows: u16) -> Result<(), ClientError> {
        let body = serde_json::json!({ "cols": cols, "rows": rows });
        self.sandbox_call("POST", id, &format!("/processes/{pid}/resize"), Some(&body))
            .map(drop)
    }

    /// The file at `path` in the sandbox, as a reader.
    pub fn download(&self, id: &str, path: &str) -> Result<Box<dyn Read + Send>, ClientError> {
        let query = format!("?path={}", encode(path));
        self.open(
            "GET",
            &Self::sandbox_path(id, "/files")?,
            &query,
            Vec::new(),
        )
    }

    /// Writes `reader` to `path` in the sandbox, streamed.
    pub fn upload(
        &self,
        id: &str,
        path: &str,
        reader: &mut dyn Read,
    ) -> Result<Value, ClientError> {
        let url = format!(
            "{}?path={}",
            self.url(&Self::sandbox_path(id, "/files")?),
            encode(path)
        );
        // The daemon opens the file before it reads the body: asked to wait
        // for its go-ahead, the client gets a refusal (a directory, a path
        // it may not write) as an answer, not as a connection closed mid-send.
        let mut request = self.agent.put(&url).header("expect", "100-continue");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let unreachable = |source| ClientError::Unreachable {
            server: self.server.clone(),
            source,
        };
        let mut response = request
            .send(ureq::SendBody::from_reader(reader))
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(unreachable)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(api_error(status, value));
        }
        Ok(value)
    }

    fn open(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Vec<u8>,
    ) -> Result<Box<dyn Read + Send>, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            server: self.server.clone(),
            source,
        };
        let url = format!("{}{query}", self.url(path));
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(body)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let response = self.agent.run(request).map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status >= 400 {
            let bytes = body
                .with_config()
                .limit(1 << 20)
                .read_to_vec()
                .map_err(unreachable)?;
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, value));
        }
        Ok(Box::new(body.into_reader()))
    }
}
