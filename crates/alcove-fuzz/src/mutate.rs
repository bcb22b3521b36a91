//! A small seeded mutator for the stable run (libFuzzer's job under
//! `scripts/fuzz.sh`): the same seed gives the same inputs, so a finding
//! in CI repeats on any machine.

/// Tokens worth inserting whole: JSON structure and edge numbers, tar and
/// PAX keywords, path tricks, whiteout names.
pub const DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"\\u0000",
    b"\\",
    b"\0",
    b"../",
    b"/",
    b"//",
    b".wh.",
    b".wh..wh..opq",
    b"ustar\0",
    b"ustar  \0",
    b"PaxHeader",
    b" size=",
    b" linkpath=",
    b" path=",
    b"=",
    b"&",
    b"%00",
    b"sha256:",
    b"@M",
    b"@C",
    b"@L",
];

/// The longest input a mutation makes.
pub const MAX_LEN: usize = 1 << 20;

/// A deterministic mutator (xorshift64* underneath).
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `input` changed by one to four mutations; `others` may be spliced in.
    pub fn mutate(&mut self, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            self.once(&mut out, others);
        }
        out.truncate(MAX_LEN);
        out
    }

    fn once(&mut self, out: &mut Vec<u8>, others: &[Vec<u8>]) {
        let len = out.len();
        let at = self.below(len + 1);
        match self.below(9) {
            0 if len > 0 => {
                let i = self.below(len);
                out[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                out[i] = self.next() as u8;
            }
            2 => {
                let bytes: Vec<u8> = (0..1 + self.below(8)).map(|_| self.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let end = (at + 1 + self.below(64)).min(len);
                out.drain(at.min(end)..end);
            }
            4 if len > 0 => {
                let start = self.below(len);
                let end = (start + 1 + self.below(512)).min(len);
                let chunk = out[start..end].to_vec();
                out.splice(at..at, chunk);
            }
            5 => {
                let token = DICTIONARY[self.below(DICTIONARY.len())];
                out.splice(at..at, token.iter().copied());
            }
            6 if !others.is_empty() => {
                let other = &others[self.below(others.len())];
                let from = self.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                // A run of digits becomes an edge number.
                let start = self.below(len);
                if let Some(d) = out[start..].iter().position(u8::is_ascii_digit) {
                    let s = start + d;
                    let e = s + out[s..].iter().take_while(|b| b.is_ascii_digit()).count();
                    let edges: [&[u8]; 6] = [
                        b"0",
                        b"4294967295",
                        b"4294967296",
                        b"18446744073709551615",
                        b"99999999999999999999999",
                        b"9223372036854775808",
                    ];
                    out.splice(s..e, edges[self.below(edges.len())].iter().copied());
                }
            }
            _ => out.truncate(at),
        }
    }
}
