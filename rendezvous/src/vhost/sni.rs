//! The server name (SNI, RFC 6066 §3) of a TLS ClientHello, read from the first bytes a
//! client sends, without terminating TLS: the HTTPS vhost routes by it and replays the
//! bytes to the peer, which talks TLS with the client end to end.
//!
//! The parser takes what has arrived so far and says "need more", the name (or that
//! there is none), or that this is no ClientHello. It never panics and never allocates
//! more than the input: every length is checked against what is left, a record must
//! be a handshake record of at most 2^14 bytes (RFC 8446 §5.1), and a hello may span
//! several records (the caller bounds the total with
//! [`common::defaults::MAX_CLIENT_HELLO`]).

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// A complete ClientHello with this server name (lowercase, no trailing dot).
    Name(String),
    /// A complete ClientHello without a `server_name` extension.
    NoName,
}

/// Why the bytes are not a ClientHello this server can route.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotHello(pub(crate) &'static str);

impl std::fmt::Display for NotHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// Largest plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

/// Reads the ClientHello at the start of `buf` (the bytes received so far).
pub(crate) fn parse(buf: &[u8]) -> Result<Hello, NotHello> {
    // The handshake message may span records: gather their payloads.
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            if pos < buf.len() && buf[pos] != HANDSHAKE {
                return Err(NotHello("not a TLS handshake"));
            }
            return Ok(Hello::NeedMore);
        };
        if header[0] != HANDSHAKE {
            return Err(NotHello("not a TLS handshake"));
        }
        if header[1] != 3 {
            return Err(NotHello("not a TLS record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(NotHello("a TLS record of impossible length"));
        }
        let Some(payload) = buf.get(pos + 5..pos + 5 + len) else {
            return Ok(Hello::NeedMore);
        };
        hs.extend_from_slice(payload);
        pos += 5 + len;
        if hs[0] != CLIENT_HELLO {
            return Err(NotHello("the first handshake message is not a ClientHello"));
        }
        if hs.len() < 4 {
            continue;
        }
        let msg_len = usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]);
        if msg_len > common::defaults::MAX_CLIENT_HELLO {
            return Err(NotHello("a ClientHello longer than the server reads"));
        }
        if let Some(body) = hs.get(4..4 + msg_len) {
            return client_hello(body);
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

const MALFORMED: NotHello = NotHello("a malformed ClientHello");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NotHello> {
        if n > self.0.len() {
            return Err(MALFORMED);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, NotHello> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, NotHello> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], NotHello> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<Reader<'a>, NotHello> {
        let n = self.u16()?;
        self.take(usize::from(n)).map(Reader)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The body of a ClientHello (RFC 8446 §4.1.2; TLS 1.0-1.2's is the same up to the
/// extensions, which are optional there).
fn client_hello(body: &[u8]) -> Result<Hello, NotHello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(MALFORMED);
    }
    r.vec16()?; // cipher_suites
    r.vec8()?; // compression methods
    if r.is_empty() {
        return Ok(Hello::NoName);
    }
    let mut exts = r.vec16()?;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut list = data.vec16()?;
        while !list.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?.0;
            if name_type == HOST_NAME {
                return host_name(name).map(Hello::Name);
            }
        }
        return Ok(Hello::NoName);
    }
    Ok(Hello::NoName)
}

/// A `host_name` as the vhost table looks it up: ASCII letters, digits, `-`, `_` and
/// dots, at most 253 characters, lowercase, no trailing dot.
fn host_name(name: &[u8]) -> Result<String, NotHello> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > 253 || !name.iter().all(ok) {
        return Err(NotHello("a server name that is not a host name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as clients send it: legacy version, random, a session id, two
    /// cipher suites, null compression, then `extensions` (each `(type, data)`).
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        for (t, d) in extensions {
            exts.extend_from_slice(&t.to_be_bytes());
            exts.extend_from_slice(&(d.len() as u16).to_be_bytes());
            exts.extend_from_slice(d);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![HOST_NAME];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut d = (entry.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&entry);
        (EXT_SERVER_NAME, d)
    }

    /// `hs` in records of at most `chunk` bytes.
    fn records(hs: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in hs.chunks(chunk) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn reads_the_server_name() {
        let hs = hello(&[(10, vec![0, 2, 0, 29]), sni("WWW.Example.COM.")]);
        let wire = records(&hs, MAX_RECORD);
        assert_eq!(parse(&wire), Ok(Hello::Name("www.example.com".into())));
        // Split over records of 7 bytes: the same.
        assert_eq!(
            parse(&records(&hs, 7)),
            Ok(Hello::Name("www.example.com".into()))
        );
        // Application data after the hello does not matter.
        let mut more = wire.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&more), Ok(Hello::Name("www.example.com".into())));
    }

    #[test]
    fn every_prefix_needs_more() {
        let wire = records(&hello(&[sni("a.example")]), 50);
        for n in 0..wire.len() {
            assert_eq!(parse(&wire[..n]), Ok(Hello::NeedMore), "prefix of {n}");
        }
    }

    #[test]
    fn hellos_without_a_name() {
        assert_eq!(
            parse(&records(&hello(&[(10, vec![0, 0])]), MAX_RECORD)),
            Ok(Hello::NoName)
        );
        // No extensions at all (TLS 1.0 style).
        let mut hs = hello(&[]);
        hs.truncate(hs.len() - 2);
        let len = (hs.len() - 4) as u32;
        hs[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
        assert_eq!(parse(&records(&hs, MAX_RECORD)), Ok(Hello::NoName));
    }

    #[test]
    fn refuses_what_is_not_a_hello() {
        let bad = |b: &[u8]| parse(b).unwrap_err();
        bad(b"GET / HTTP/1.1\r\n\r\n");
        bad(&[HANDSHAKE, 2, 0, 0, 1, 1]);
        bad(&[HANDSHAKE, 3, 1, 0, 0]);
        bad(&[HANDSHAKE, 3, 1, 0x40, 1]); // a record over 2^14
        bad(&[HANDSHAKE, 3, 1, 0, 4, 2, 0, 0, 0]); // a ServerHello
        bad(&[HANDSHAKE, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]); // 16 MB hello
                                                            // Lengths inside that point past the message.
        let mut hs = hello(&[sni("a.example")]);
        let n = hs.len();
        hs[n - 11] = 0xff; // the name's length
        bad(&records(&hs, MAX_RECORD));
        // A name that is not a host name.
        bad(&records(&hello(&[sni("a b")]), MAX_RECORD));
        bad(&records(&hello(&[sni("")]), MAX_RECORD));
        bad(&records(&hello(&[sni("a\0.example")]), MAX_RECORD));
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        // A small xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = records(&hello(&[(10, vec![0, 2, 0, 29]), sni("a.example")]), 40);
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            let _ = parse(&b[..cut]);
            let len = (next() % 64) as usize;
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse(&noise);
        }
    }
}
