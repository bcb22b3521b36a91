//! The response a `protocol = "http"` handler writes: a CGI response
//! (RFC 3875 §6.2): header lines `Name: value`, each ended by `\n` or
//! `\r\n`, up to an empty line; then the body. `Status: CODE [REASON]` sets
//! the status (200 when absent; 302 when absent and `Location` is given),
//! `Content-Type` the type (`application/octet-stream` when absent).
//! Parsed from untrusted bytes: every size is bounded and nothing panics.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;

/// Bytes of header block, blank line included.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Header lines in the block.
pub const MAX_HEAD_LINES: usize = 100;

/// A parsed header block.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub status: StatusCode,
    /// What goes to the client: hop-by-hop fields, Content-Length and
    /// `x-alcove-*` are left out.
    pub headers: HeaderMap,
    /// Bytes the block took, its blank line included: the body starts here.
    pub len: usize,
}

/// What was wrong with a header block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgiError {
    #[error("its header block is over {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("its header block has over {MAX_HEAD_LINES} lines")]
    TooManyLines,
    #[error("line {0} of its header block is not 'Name: value'")]
    NotAHeader(usize),
    #[error("line {0} of its header block has a header name that is not valid")]
    BadName(usize),
    #[error("line {0} of its header block has a header value that is not valid")]
    BadValue(usize),
    #[error(
        "line {0} of its header block is not a status: use 'Status: CODE' with CODE 200 to 599, \
         once, such as 'Status: 404 Not Found'"
    )]
    BadStatus(usize),
    #[error(
        "line {0} of its header block repeats Content-Type or Location, which a response \
         carries once (a client and a proxy could each take a different one)"
    )]
    Repeated(usize),
    #[error("its stdout ended before the empty line that ends the header block")]
    Unterminated,
}

/// Parses the header block at the start of `buf`. `Ok(None)`: not complete
/// yet (read more, and call [`parse_at_end`] at end of file). Each complete
/// line is checked as it comes, so a handler that writes no header block is
/// told so at its first line.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, CgiError> {
    let mut start = 0;
    let mut head = Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        len: 0,
    };
    let mut status = None;
    for number in 1.. {
        let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') else {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(CgiError::TooLarge)
            } else {
                Ok(None)
            };
        };
        let end = start + nl + 1;
        if end > MAX_HEAD_BYTES {
            return Err(CgiError::TooLarge);
        }
        let line = &buf[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start = end;
        if line.is_empty() {
            head.len = end;
            break;
        }
        if number > MAX_HEAD_LINES {
            return Err(CgiError::TooManyLines);
        }
        add_line(&mut head.headers, &mut status, line, number)?;
    }
    let h = &mut head.headers;
    head.status = status.unwrap_or(if h.contains_key(header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    Ok(Some(head))
}

/// [`parse_head`] once nothing more will come.
pub fn parse_at_end(buf: &[u8]) -> Result<Head, CgiError> {
    parse_head(buf)?.ok_or(CgiError::Unterminated)
}

/// Fields the client must not get from a handler: hop-by-hop ones (RFC 9110
/// §7.6.1), the framing (alcove's), alcove's own, and the one that would let
/// a function's script control pages beyond its own path (the console's).
fn dropped(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "service-worker-allowed"
    ) || n.starts_with("proxy-")
        || n.starts_with("x-alcove-")
}

fn add_line(
    headers: &mut HeaderMap,
    status: &mut Option<StatusCode>,
    line: &[u8],
    number: usize,
) -> Result<(), CgiError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(CgiError::NotAHeader(number))?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| CgiError::BadName(number))?;
    let value = line[colon + 1..].trim_ascii();
    if name.as_str() == "status" {
        if status.is_some() {
            return Err(CgiError::BadStatus(number));
        }
        *status = Some(parse_status(value).ok_or(CgiError::BadStatus(number))?);
        return Ok(());
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| CgiError::BadValue(number))?;
    let single = name == header::CONTENT_TYPE || name == header::LOCATION;
    if single && headers.contains_key(&name) {
        return Err(CgiError::Repeated(number));
    }
    if !dropped(&name) {
        headers.append(name, value);
    }
    Ok(())
}

/// `CODE` or `CODE REASON`, CODE three digits from 200 to 599: alcove sends
/// no interim (1xx) responses.
fn parse_status(value: &[u8]) -> Option<StatusCode> {
    let code = value.get(..3)?;
    if value.len() > 3 && value[3] != b' ' && value[3] != b'\t' {
        return None;
    }
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    StatusCode::from_bytes(code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Result<Option<Head>, CgiError> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn a_full_block_sets_status_type_and_headers() {
        let h = head("Status: 201 Created\r\nContent-Type: text/plain\r\nX-Thing:  a b \r\nSet-Cookie: a=1\nSet-Cookie: b=2\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.headers["content-type"], "text/plain");
        assert_eq!(h.headers["x-thing"], "a b");
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(
            &b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-Thing:  a b \r\nSet-Cookie: a=1\nSet-Cookie: b=2\n\r\nbody"[h.len..],
            b"body"
        );
    }

    #[test]
    fn defaults_and_what_is_left_out() {
        let h = head("\nrest").unwrap().unwrap();
        assert_eq!((h.status, h.len), (StatusCode::OK, 1));
        assert_eq!(h.headers["content-type"], "application/octet-stream");
        let h = head("Location: /x\n\n").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::FOUND);
        let h = head("Status: 404\nConnection: close\nTransfer-Encoding: chunked\nContent-Length: 9\nProxy-Authenticate: x\nX-Alcove-Invocation: fake\nKeep-Alive: 1\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert_eq!(h.headers.len(), 1, "{:?}", h.headers); // the default content type
    }

    #[test]
    fn incomplete_blocks_wait_and_end_of_file_says_so() {
        assert_eq!(head("Status: 200\r\n"), Ok(None));
        assert_eq!(head("Status: 2"), Ok(None));
        assert_eq!(head(""), Ok(None));
        assert_eq!(parse_at_end(b"Status: 200\n"), Err(CgiError::Unterminated));
        assert_eq!(parse_at_end(b"hello world"), Err(CgiError::Unterminated));
        // A line is checked once it is whole, before the block ends.
        assert_eq!(head("hello world\nmore"), Err(CgiError::NotAHeader(1)));
    }

    #[test]
    fn bad_blocks_name_their_line() {
        assert_eq!(head("hello\n\n"), Err(CgiError::NotAHeader(1)));
        assert_eq!(head("A: b\nBad Name: x\n\n"), Err(CgiError::BadName(2)));
        assert_eq!(head(": x\n\n"), Err(CgiError::BadName(1)));
        assert_eq!(head("A: b\x01c\n\n"), Err(CgiError::BadValue(1)));
        for bad in ["99", "600", "1000", "abc", "100", "20x", "2000 OK", ""] {
            assert_eq!(
                head(&format!("Status: {bad}\n\n")),
                Err(CgiError::BadStatus(1)),
                "{bad}"
            );
        }
        assert_eq!(
            head("Status: 200\nStatus: 201\n\n"),
            Err(CgiError::BadStatus(2))
        );
        assert_eq!(head(" folded: x\n\n"), Err(CgiError::BadName(1)));
        assert_eq!(
            head("Content-Type: text/plain\ncontent-type: text/html\n\n"),
            Err(CgiError::Repeated(2))
        );
        assert_eq!(
            head("Location: /a\nX: y\nLocation: http://elsewhere/\n\n"),
            Err(CgiError::Repeated(3))
        );
    }

    #[test]
    fn blocks_beyond_the_bounds_are_refused() {
        let many = "A: b\n".repeat(MAX_HEAD_LINES + 1) + "\n";
        assert_eq!(head(&many), Err(CgiError::TooManyLines));
        let enough = "A: b\n".repeat(MAX_HEAD_LINES) + "\n";
        assert!(head(&enough).unwrap().is_some());
        let long = format!("A: {}\n\n", "x".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&long), Err(CgiError::TooLarge));
        let unended = "x".repeat(MAX_HEAD_BYTES);
        assert_eq!(head(&unended), Err(CgiError::TooLarge));
        assert_eq!(head(&unended[1..]), Ok(None));
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic_and_a_head_stays_in_bounds(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            if let Ok(Some(h)) = parse_head(&bytes) {
                prop_assert!(h.len <= bytes.len() && h.len <= MAX_HEAD_BYTES);
                prop_assert!((200..=599).contains(&h.status.as_u16()));
            }
            let _ = parse_at_end(&bytes);
        }

        #[test]
        fn header_like_lines_never_panic(
            lines in proptest::collection::vec("[ -~\t\r\u{80}-\u{ff}]{0,40}", 0..120),
        ) {
            let text = lines.join("\n") + "\n\n";
            if let Ok(Some(h)) = parse_head(text.as_bytes()) {
                prop_assert!(h.len <= text.len());
                prop_assert!(h.headers.contains_key("content-type"));
            }
        }
    }
}
