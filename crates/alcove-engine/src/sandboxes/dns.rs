//! The DNS messages an outbound sandbox's resolver reads and writes: the
//! question of a query, an answer refusing it, and the addresses an
//! upstream answer gives (which the sandbox may then reach). Only what a
//! stub resolver sends is accepted: one question, standard query.

use std::net::IpAddr;

/// The header's size; every message starts with one.
const HEADER: usize = 12;
/// Record types carrying an address.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Response codes.
pub(super) const SERVFAIL: u8 = 2;
pub(super) const NXDOMAIN: u8 = 3;

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Question {
    pub id: u16,
    /// Lower case, without the final dot.
    pub name: String,
    /// Where the question ends in the message (header and question are
    /// copied into a refusal).
    pub end: usize,
}

/// Reads a query's question; None for anything a stub resolver would not
/// send (a response, another opcode, several questions, a pointer).
pub(super) fn question(query: &[u8]) -> Option<Question> {
    if query.len() < HEADER {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let (flags, qdcount) = (query[2], u16::from_be_bytes([query[4], query[5]]));
    if flags & 0x80 != 0 || (flags >> 3) & 0xf != 0 || qdcount != 1 {
        return None;
    }
    let (name, at) = read_name(query, HEADER, false)?;
    let end = at.checked_add(4).filter(|&e| e <= query.len())?;
    Some(Question { id, name, end })
}

/// An answer to `query` (whose question is `q`) saying `rcode`, with no records.
pub(super) fn refusal(query: &[u8], q: &Question, rcode: u8) -> Vec<u8> {
    let mut out = query[..q.end].to_vec();
    out[2] = 0x80 | (query[2] & 0x01); // a response; recursion desired as asked
    out[3] = 0x80 | (rcode & 0x0f); // recursion available
    out[6..12].fill(0); // no answer, authority or additional records
    out
}

/// An empty answer to `query` with the truncation bit set: "ask again over
/// TCP", what a UDP server says of an answer too large for a datagram.
pub(super) fn truncated(query: &[u8], q: &Question) -> Vec<u8> {
    let mut out = refusal(query, q, 0);
    out[2] |= 0x02;
    out
}

/// Whether `answer` answers `q`: the same id, a response, the same question.
pub(super) fn answers(answer: &[u8], query: &[u8], q: &Question) -> bool {
    answer.len() >= q.end
        && answer[..2] == query[..2]
        && answer[2] & 0x80 != 0
        && answer[4..6] == query[4..6]
        && answer[HEADER..q.end].eq_ignore_ascii_case(&query[HEADER..q.end])
}

/// Record type of an alias.
const TYPE_CNAME: u16 = 5;
/// Records of an answer looked at, and aliases followed: more is no
/// answer a resolver gives for one name.
const MAX_RECORDS: usize = 64;
const MAX_ALIASES: usize = 16;

/// The addresses an answer gives for its question: the A and AAAA records
/// of the question's name and of the aliases (CNAME) it leads to, no
/// others (a record for an unrelated name would open an address the
/// sandbox never asked for). At most [`MAX_RECORDS`] records are read.
pub(super) fn addresses(answer: &[u8]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if answer.len() < HEADER {
        return out;
    }
    let qdcount = u16::from_be_bytes([answer[4], answer[5]]);
    let ancount = u16::from_be_bytes([answer[6], answer[7]]);
    let mut at = HEADER;
    let mut asked = None;
    for _ in 0..qdcount {
        let Some((name, end)) = read_name(answer, at, true) else {
            return out;
        };
        asked.get_or_insert(name);
        at = end + 4;
    }
    let Some(asked) = asked else {
        return out;
    };
    // (owner, type, where its data starts, its data)
    let mut records: Vec<(String, u16, usize, &[u8])> = Vec::new();
    for _ in 0..usize::from(ancount).min(MAX_RECORDS) {
        let Some((owner, end)) = read_name(answer, at, true) else {
            break;
        };
        let Some(fixed) = answer.get(end..end + 10) else {
            break;
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let Some(data) = answer.get(end + 10..end + 10 + len) else {
            break;
        };
        if class == CLASS_IN {
            records.push((owner, rtype, end + 10, data));
        }
        at = end + 10 + len;
    }
    let mut chain = vec![asked];
    while chain.len() <= MAX_ALIASES {
        let last = chain.last().expect("the question's name");
        let next = records.iter().find_map(|(owner, rtype, start, _)| {
            (*rtype == TYPE_CNAME && owner == last)
                .then(|| read_name(answer, *start, true).map(|(n, _)| n))
                .flatten()
        });
        match next {
            Some(alias) if !chain.contains(&alias) => chain.push(alias),
            _ => break,
        }
    }
    for (owner, rtype, _, data) in &records {
        if !chain.contains(owner) {
            continue;
        }
        let addr = match (*rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::from(<[u8; 4]>::try_from(*data).expect("4 bytes")),
            (TYPE_AAAA, 16) => IpAddr::from(<[u8; 16]>::try_from(*data).expect("16 bytes")),
            _ => continue,
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Reads the name at `at`: its text and where it ends. Pointers are
/// followed only when `pointers` (answers), at most 16 deep.
fn read_name(msg: &[u8], at: usize, pointers: bool) -> Option<(String, usize)> {
    let mut name = String::new();
    let (mut pos, mut end, mut jumps) = (at, None, 0);
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => break,
            l if l & 0xc0 == 0xc0 => {
                if !pointers || jumps >= 16 {
                    return None;
                }
                let target = usize::from(u16::from_be_bytes([l & 0x3f, *msg.get(pos + 1)?]));
                end.get_or_insert(pos + 2);
                pos = target;
                jumps += 1;
                continue;
            }
            l if l > 63 => return None,
            l => {
                let label = msg.get(pos + 1..pos + 1 + usize::from(l))?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return None; // not a host name: nothing an allow-list names
                    }
                    name.push(b.to_ascii_lowercase() as char);
                }
                if name.len() > 253 {
                    return None;
                }
                pos += 1 + usize::from(l);
            }
        }
    }
    Some((name, end.unwrap_or(pos + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name`, type A, as `dig` sends it.
    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn reads_the_question_in_lower_case() {
        let q = query("Api.Example.COM");
        let read = question(&q).unwrap();
        assert_eq!(read.name, "api.example.com");
        assert_eq!(read.id, 0x1234);
        assert_eq!(read.end, q.len());
    }

    #[test]
    fn refuses_responses_pointers_and_odd_names() {
        let mut response = query("a.b");
        response[2] |= 0x80;
        assert!(question(&response).is_none());
        let mut two = query("a.b");
        two[5] = 2;
        assert!(question(&two).is_none());
        assert!(question(&query("a b.c")).is_none());
        let mut pointer = query("a.b")[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(question(&pointer).is_none());
        assert!(question(&[0; 5]).is_none());
        let mut cut = query("example.com");
        cut.truncate(cut.len() - 2);
        assert!(question(&cut).is_none());
    }

    #[test]
    fn a_refusal_is_a_response_with_the_question_and_no_records() {
        let q = query("blocked.test");
        let read = question(&q).unwrap();
        let r = refusal(&q, &read, NXDOMAIN);
        assert_eq!(&r[..2], &q[..2]);
        assert_eq!(r[2] & 0x80, 0x80);
        assert_eq!(r[3] & 0x0f, NXDOMAIN);
        assert_eq!(&r[4..6], &[0, 1]);
        assert_eq!(&r[6..12], &[0; 6]);
        assert!(answers(&r, &q, &read));
        assert!(!answers(&q, &q, &read), "a query is not an answer");
    }

    #[test]
    fn addresses_follow_pointers_and_aliases() {
        let q = query("www.example.com");
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 3; // three answers
                  // www.example.com CNAME example.com (a pointer into the question)
        a.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 16]);
        // example.com A 192.0.2.7
        a.extend_from_slice(&[0xc0, 16, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        // example.com AAAA 2001:db8::1
        a.extend_from_slice(&[0xc0, 16, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        a.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let got = addresses(&a);
        assert_eq!(
            got,
            vec![
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        // A loop of pointers ends.
        let mut looped = q[..12].to_vec();
        looped[5] = 0;
        looped[7] = 1;
        looped.extend_from_slice(&[0xc0, 12]);
        assert!(addresses(&looped).is_empty());
        // A record running past the end is not read.
        let mut cut = a.clone();
        cut.truncate(cut.len() - 3);
        assert_eq!(addresses(&cut).len(), 1);
    }

    #[test]
    fn only_the_questions_chain_opens_and_a_flood_is_read_in_part() {
        let q = query("www.example.com");
        let mut other = q.clone();
        other[2] = 0x81;
        other[3] = 0x80;
        other[7] = 2;
        // www.example.com A 192.0.2.1
        other.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        // other.test A 198.18.0.4: a name the question did not lead to
        other.extend_from_slice(&[
            5, b'o', b't', b'h', b'e', b'r', 4, b't', b'e', b's', b't', 0,
        ]);
        other.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 4]);
        assert_eq!(
            addresses(&other),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        // 4,000 records: the first MAX_RECORDS are read, each address once.
        let mut flood = q.clone();
        flood[2] = 0x81;
        flood[3] = 0x80;
        flood[6..8].copy_from_slice(&4000u16.to_be_bytes());
        for i in 0..4000u32 {
            let last = (i % 200) as u8;
            flood.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 231, 0, last]);
        }
        let got = addresses(&flood);
        assert_eq!(got.len(), super::MAX_RECORDS, "{got:?}");
    }
}
