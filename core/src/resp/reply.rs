//! Replies to clients and their encoding in RESP2 or RESP3. Commands build a
//! `Reply` once; the connection encodes it in the protocol the client chose
//! (HELLO), with RESP3-only types falling back to what Redis sends RESP2
//! clients.

use bytes::Bytes;

/// A reply, in RESP3's vocabulary; [`encode`] maps it onto RESP2 when needed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    /// Written as given: the caller supplies the code prefix ("ERR ...", "WRONGTYPE ...").
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Nil,
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    Double(f64),
    Bool(bool),
    Verbatim(String),
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".to_owned())
    }

    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }

    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    pub fn from_str_bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// The protocol a connection speaks: RESP2 until the client sends `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// Appends the encoding of `reply` to `out`.
pub fn encode(reply: &Reply, proto: Protocol, out: &mut Vec<u8>) {
    let resp3 = proto == Protocol::Resp3;
    // Replies nest as deep as the data they describe; an explicit stack keeps
    // deep nesting from overflowing the thread's stack.
    let mut stack = vec![reply];
    while let Some(reply) = stack.pop() {
        match reply {
            Reply::Simple(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Integer(n) => integer(out, *n),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Double(d) if resp3 => {
                out.push(b',');
                out.extend_from_slice(format_double(*d).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Double(d) => bulk(out, format_double(*d).as_bytes()),
            Reply::Bool(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Bool(b) => integer(out, i64::from(*b)),
            Reply::Verbatim(text) if resp3 => {
                header(out, b'=', text.len() + 4);
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(text) => bulk(out, text.as_bytes()),
            Reply::Array(items) => aggregate(out, &mut stack, b'*', items),
            Reply::Set(items) => aggregate(out, &mut stack, if resp3 { b'~' } else { b'*' }, items),
            Reply::Push(items) => aggregate(out, &mut stack, if resp3 { b'>' } else { b'*' }, items),
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', 2 * pairs.len());
                }
                for (key, value) in pairs.iter().rev() {
                    stack.push(value);
                    stack.push(key);
                }
            }
        }
    }
}

/// Writes an aggregate's header and schedules its items, first item on top.
fn aggregate<'a>(out: &mut Vec<u8>, stack: &mut Vec<&'a Reply>, kind: u8, items: &'a [Reply]) {
    header(out, kind, items.len());
    stack.extend(items.iter().rev());
}

/// A simple string or error. These are framed by their CRLF, so a CR or LF in
/// the text (say, from a message quoting user input) would end the reply early
/// and desynchronise the client; they become spaces.
fn line(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal without the allocation `to_string` would make.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// A double as Redis writes it: `inf`, `-inf`, `nan`, integral values without
/// a fraction, others in the shortest form that reads back to the same value.
/// Like C's `%.17g`, very large or small magnitudes use an exponent, so that
/// 1e300 is not three hundred digits.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if d != 0.0 && !(1e-4..1e17).contains(&d.abs()) {
        format!("{d:e}")
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, proto: Protocol) -> String {
        let mut out = Vec::new();
        encode(reply, proto, &mut out);
        String::from_utf8(out).expect("test replies are UTF-8")
    }

    /// Checks a reply's RESP2 and RESP3 encodings.
    fn check(reply: Reply, resp2: &str, resp3: &str) {
        assert_eq!(encoded(&reply, Protocol::Resp2), resp2, "RESP2 of {reply:?}");
        assert_eq!(encoded(&reply, Protocol::Resp3), resp3, "RESP3 of {reply:?}");
    }

    #[test]
    fn scalars() {
        check(Reply::ok(), "+OK\r\n", "+OK\r\n");
        check(Reply::error("ERR unknown command"), "-ERR unknown command\r\n", "-ERR unknown command\r\n");
        check(Reply::error("no prefix"), "-no prefix\r\n", "-no prefix\r\n");
        check(Reply::Integer(0), ":0\r\n", ":0\r\n");
        check(Reply::Integer(-42), ":-42\r\n", ":-42\r\n");
        check(Reply::Integer(i64::MIN), ":-9223372036854775808\r\n", ":-9223372036854775808\r\n");
        check(Reply::Integer(i64::MAX), ":9223372036854775807\r\n", ":9223372036854775807\r\n");
        check(Reply::bulk(&b"a\r\nb"[..]), "$4\r\na\r\nb\r\n", "$4\r\na\r\nb\r\n");
        check(Reply::from_str_bulk(""), "$0\r\n\r\n", "$0\r\n\r\n");
        check(Reply::Nil, "$-1\r\n", "_\r\n");
        check(Reply::NilArray, "*-1\r\n", "_\r\n");
        check(Reply::Bool(true), ":1\r\n", "#t\r\n");
        check(Reply::Bool(false), ":0\r\n", "#f\r\n");
        check(Reply::Verbatim("hi\r\nthere".into()), "$9\r\nhi\r\nthere\r\n", "=13\r\ntxt:hi\r\nthere\r\n");
    }

    #[test]
    fn simple_strings_and_errors_stay_on_one_line() {
        check(Reply::Simple("a\r\nb\nc".into()), "+a  b c\r\n", "+a  b c\r\n");
        check(Reply::error("ERR bad\r\nkey"), "-ERR bad  key\r\n", "-ERR bad  key\r\n");
    }

    #[test]
    fn doubles() {
        let cases = [
            (3.0, "3"),
            (-3.0, "-3"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e16, "10000000000000000"),
            (1e17, "1e17"),
            (1e300, "1e300"),
            (1.5e-7, "1.5e-7"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (d, text) in cases {
            check(Reply::Double(d), &format!("${}\r\n{text}\r\n", text.len()), &format!(",{text}\r\n"));
            assert_eq!(text.parse::<f64>().map(|r| r.to_bits() == d.to_bits() || d.is_nan()), Ok(true));
        }
    }

    #[test]
    fn aggregates() {
        check(Reply::Array(vec![]), "*0\r\n", "*0\r\n");
        check(Reply::Set(vec![Reply::Integer(1), Reply::Integer(2)]), "*2\r\n:1\r\n:2\r\n", "~2\r\n:1\r\n:2\r\n");
        check(
            Reply::Push(vec![Reply::from_str_bulk("message"), Reply::Nil]),
            "*2\r\n$7\r\nmessage\r\n$-1\r\n",
            ">2\r\n$7\r\nmessage\r\n_\r\n",
        );
        check(
            Reply::Map(vec![
                (Reply::from_str_bulk("a"), Reply::Integer(1)),
                (Reply::from_str_bulk("b"), Reply::Bool(true)),
            ]),
            "*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:1\r\n",
            "%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n#t\r\n",
        );
    }

    #[test]
    fn nested_aggregates_keep_their_order() {
        let reply = Reply::Array(vec![
            Reply::Integer(1),
            Reply::Array(vec![Reply::from_str_bulk("x"), Reply::Array(vec![]), Reply::NilArray]),
            Reply::Map(vec![(
                Reply::Simple("k".into()),
                Reply::Set(vec![Reply::Double(2.5), Reply::Map(vec![(Reply::Integer(7), Reply::Nil)])]),
            )]),
            Reply::Integer(2),
        ]);
        check(
            reply,
            "*4\r\n:1\r\n*3\r\n$1\r\nx\r\n*0\r\n*-1\r\n*2\r\n+k\r\n*2\r\n$3\r\n2.5\r\n*2\r\n:7\r\n$-1\r\n:2\r\n",
            "*4\r\n:1\r\n*3\r\n$1\r\nx\r\n*0\r\n_\r\n%1\r\n+k\r\n~2\r\n,2.5\r\n%1\r\n:7\r\n_\r\n:2\r\n",
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let mut reply = Reply::Nil;
        for _ in 0..100_000 {
            reply = Reply::Array(vec![reply]);
        }
        let mut out = Vec::new();
        encode(&reply, Protocol::Resp3, &mut out);
        assert_eq!(out.len(), 100_000 * 4 + 3);
        // Dropping a value this deep would itself recurse; the test only cares about encoding.
        std::mem::forget(reply);
    }
}
