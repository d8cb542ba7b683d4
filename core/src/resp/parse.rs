//! Incremental parsing of client requests: the multibulk form (`*<n>` then
//! n bulk strings) that clients send, and the inline form (one line of
//! space-separated, optionally quoted words) that people type into telnet.
//! The parser keeps its place between reads, so a large value arriving in
//! many small reads is never rescanned, and it bounds everything a client
//! announces before acting on it.

use bytes::{Buf, Bytes, BytesMut};

/// Bounds on what one request may announce or contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest bulk string (one argument) accepted.
    pub max_bulk_bytes: usize,
    /// Most arguments in one command, command name included.
    pub max_args: usize,
    /// Longest inline request line, without its line ending.
    pub max_inline_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        // A value of 1 MiB plus room for a key and command overhead; Redis's
        // 512 MiB would let one client pin far more memory than we allow.
        ParseLimits { max_bulk_bytes: (1 << 20) + (1 << 16), max_args: 1 << 20, max_inline_bytes: 64 << 10 }
    }
}

/// A malformed request. The connection sends the message as an error reply
/// and closes, since the position of the next request is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{}'", show_byte(*.0))]
    ExpectedBulk(u8),
    #[error("Protocol error: too big inline request")]
    TooBigInlineRequest,
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: too many arguments ({count}; the limit is {limit})")]
    TooManyArgs { count: u64, limit: usize },
    #[error("Protocol error: bulk string is {len} bytes; the limit is {limit} bytes (max_value_bytes)")]
    BulkTooLarge { len: u64, limit: usize },
    #[error("Protocol error: bulk string not terminated by CRLF")]
    UnterminatedBulk,
}

/// The offending byte as Redis shows it, except that bytes which are not
/// printable ASCII are escaped, so the message stays one readable line.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        char::from(b).to_string()
    } else {
        format!("\\x{b:02x}")
    }
}

/// `*<count>` and `$<len>` lines are numbers; anything longer is not a request.
const MAX_HEADER_LINE: usize = 32;

/// Arguments reserved up front; a client's announced count is only a claim,
/// so memory follows the arguments actually received.
const MAX_PREALLOCATED_ARGS: usize = 1024;

/// Parses requests out of a connection's read buffer, one command per call.
#[derive(Debug)]
pub struct RequestParser {
    limits: ParseLimits,
    state: State,
    /// After an error the stream has no known framing; every later call repeats it.
    failed: Option<ProtocolError>,
}

#[derive(Debug)]
enum State {
    /// At the first byte of a request.
    Start,
    /// Inside an inline line; `scanned` bytes are known to hold no newline.
    Inline {
        scanned: usize,
    },
    Multibulk(Multibulk),
}

/// A multibulk request whose `*<count>` header has been consumed.
#[derive(Debug)]
struct Multibulk {
    remaining: usize,
    args: Vec<Bytes>,
    /// Length of the bulk whose `$<len>` header has been consumed but whose payload has not.
    pending: Option<usize>,
}

impl RequestParser {
    pub fn new(limits: ParseLimits) -> Self {
        RequestParser { limits, state: State::Start, failed: None }
    }

    /// The next complete command in `buf`, or `None` if more input is needed.
    ///
    /// Consumes exactly the bytes of the elements it has parsed (headers and
    /// whole bulk strings), so `buf` keeps only input not yet understood and
    /// the caller can keep appending to it. Empty commands (`*0`, blank
    /// lines) are skipped, as Redis does.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.step(buf);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            let args = match &mut self.state {
                State::Start => {
                    self.state = match buf.first() {
                        None => return Ok(None),
                        Some(b'*') => match multibulk_header(buf, &self.limits)? {
                            None => return Ok(None),
                            Some(0) => State::Start,
                            Some(count) => State::Multibulk(Multibulk::new(count)),
                        },
                        Some(_) => State::Inline { scanned: 0 },
                    };
                    continue;
                }
                State::Inline { scanned } => match read_inline(buf, scanned, &self.limits)? {
                    None => return Ok(None),
                    Some(args) => args,
                },
                State::Multibulk(m) => match m.read_args(buf, &self.limits)? {
                    None => return Ok(None),
                    Some(args) => args,
                },
            };
            self.state = State::Start;
            if !args.is_empty() {
                return Ok(Some(args));
            }
        }
    }
}

impl Multibulk {
    fn new(count: usize) -> Self {
        Multibulk { remaining: count, args: Vec::with_capacity(count.min(MAX_PREALLOCATED_ARGS)), pending: None }
    }

    /// Reads bulk strings until the command is complete or the input runs out.
    fn read_args(&mut self, buf: &mut BytesMut, limits: &ParseLimits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        while self.remaining > 0 {
            let len = match self.pending {
                Some(len) => len,
                None => match bulk_header(buf, limits)? {
                    None => return Ok(None),
                    Some(len) => *self.pending.insert(len),
                },
            };
            // Waiting for a large payload costs one comparison per read.
            if buf.len() < len.saturating_add(2) {
                return Ok(None);
            }
            if buf[len..len + 2] != *b"\r\n" {
                return Err(ProtocolError::UnterminatedBulk);
            }
            self.args.push(buf.split_to(len).freeze());
            buf.advance(2);
            self.pending = None;
            self.remaining -= 1;
        }
        Ok(Some(std::mem::take(&mut self.args)))
    }
}

/// Consumes a `*<count>` line: the number of arguments, 0 for an empty command.
fn multibulk_header(buf: &mut BytesMut, limits: &ParseLimits) -> Result<Option<usize>, ProtocolError> {
    let invalid = ProtocolError::InvalidMultibulkLength;
    let Some((digits, used)) = header_line(buf, ProtocolError::TooBigMultibulkCount, invalid.clone())? else {
        return Ok(None);
    };
    let count = match digits.strip_prefix(b"-") {
        // Negative counts are null arrays, which Redis treats as empty commands.
        Some(magnitude) => parse_decimal(magnitude).filter(|&m| m > 0).map(|_| 0),
        None => parse_decimal(digits),
    };
    let count = count.ok_or(invalid)?;
    let count = match usize::try_from(count) {
        Ok(c) if c <= limits.max_args => c,
        _ => return Err(ProtocolError::TooManyArgs { count, limit: limits.max_args }),
    };
    buf.advance(used);
    Ok(Some(count))
}

/// Consumes a `$<len>` line: the length of the bulk string that follows.
fn bulk_header(buf: &mut BytesMut, limits: &ParseLimits) -> Result<Option<usize>, ProtocolError> {
    match buf.first() {
        None => return Ok(None),
        Some(b'$') => {}
        // Also what a nested array gets, so nesting depth never reaches the parser.
        Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
    }
    let invalid = ProtocolError::InvalidBulkLength;
    let Some((digits, used)) = header_line(buf, ProtocolError::TooBigBulkCount, invalid.clone())? else {
        return Ok(None);
    };
    let len = parse_decimal(digits).ok_or(invalid)?;
    let len = match usize::try_from(len) {
        Ok(l) if l <= limits.max_bulk_bytes => l,
        _ => return Err(ProtocolError::BulkTooLarge { len, limit: limits.max_bulk_bytes }),
    };
    buf.advance(used);
    Ok(Some(len))
}

/// Finds the header line at the start of `buf` (its type byte, then a
/// number, then CRLF): the number's bytes and the line's length with CRLF.
fn header_line(
    buf: &[u8],
    too_big: ProtocolError,
    invalid: ProtocolError,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_HEADER_LINE + 1)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) => match buf.get(cr + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&buf[1..cr], cr + 2))),
            Some(_) => Err(invalid),
        },
        None if buf.len() > MAX_HEADER_LINE => Err(too_big),
        None => Ok(None),
    }
}

/// A non-negative decimal in canonical form (digits only, no leading zero,
/// no overflow), as Redis's string2ll accepts it.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => digits.iter().try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }),
    }
}

/// Reads an inline request line: its arguments, none for a blank line.
fn read_inline(
    buf: &mut BytesMut,
    scanned: &mut usize,
    limits: &ParseLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    // The line, an optional CR and the LF.
    let most = limits.max_inline_bytes.saturating_add(2);
    let window = buf.len().min(most);
    let from = (*scanned).min(window);
    let Some(lf) = buf[from..window].iter().position(|&b| b == b'\n') else {
        if buf.len() >= most {
            return Err(ProtocolError::TooBigInlineRequest);
        }
        *scanned = window;
        return Ok(None);
    };
    let line = buf.split_to(from + lf + 1);
    let line = &line[..line.len() - 1];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.max_inline_bytes {
        return Err(ProtocolError::TooBigInlineRequest);
    }
    split_args(line, limits.max_args).map(Some)
}

/// Splits an inline line into arguments the way Redis's sdssplitargs does,
/// so that what works in redis-cli's telnet habit works here.
fn split_args(line: &[u8], max_args: usize) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while line.get(at).is_some_and(|&b| is_c_space(b)) {
            at += 1;
        }
        if at == line.len() {
            break;
        }
        let (arg, next) = read_word(line, at)?;
        args.push(Bytes::from(arg));
        at = next;
    }
    if args.len() > max_args {
        return Err(ProtocolError::TooManyArgs { count: args.len() as u64, limit: max_args });
    }
    Ok(args)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    None,
    Double,
    Single,
}

/// Reads one word starting at `at`: its bytes and where the word ended.
fn read_word(line: &[u8], mut at: usize) -> Result<(Vec<u8>, usize), ProtocolError> {
    let mut word = Vec::new();
    let mut quoting = Quoting::None;
    loop {
        let Some(&b) = line.get(at) else {
            return match quoting {
                Quoting::None => Ok((word, at)),
                _ => Err(ProtocolError::UnbalancedQuotes),
            };
        };
        match quoting {
            Quoting::None => match b {
                // sdssplitargs ends unquoted words only on these, not on every isspace byte.
                b' ' | b'\n' | b'\r' | b'\t' => return Ok((word, at)),
                b'"' => quoting = Quoting::Double,
                b'\'' => quoting = Quoting::Single,
                _ => word.push(b),
            },
            Quoting::Double => match b {
                b'\\' => {
                    let (byte, used) = double_quoted_escape(&line[at + 1..])?;
                    word.push(byte);
                    at += used;
                }
                b'"' => return closing_quote(line, at).map(|next| (word, next)),
                _ => word.push(b),
            },
            Quoting::Single => match b {
                b'\\' if line.get(at + 1) == Some(&b'\'') => {
                    word.push(b'\'');
                    at += 1;
                }
                b'\'' => return closing_quote(line, at).map(|next| (word, next)),
                _ => word.push(b),
            },
        }
        at += 1;
    }
}

/// The byte an escape inside double quotes stands for (`rest` follows the
/// backslash) and how many bytes of `rest` it used.
fn double_quoted_escape(rest: &[u8]) -> Result<(u8, usize), ProtocolError> {
    if let [b'x', hi, lo, ..] = rest {
        if let (Some(hi), Some(lo)) = (hex_value(*hi), hex_value(*lo)) {
            return Ok(((hi << 4) | lo, 3));
        }
    }
    let byte = match rest.first() {
        // A backslash ending the line leaves the quote open.
        None => return Err(ProtocolError::UnbalancedQuotes),
        Some(b'n') => b'\n',
        Some(b'r') => b'\r',
        Some(b't') => b'\t',
        Some(b'b') => 0x08,
        Some(b'a') => 0x07,
        Some(&other) => other,
    };
    Ok((byte, 1))
}

/// A closing quote must end the word; `"a"b` is a mistake, not `ab`.
fn closing_quote(line: &[u8], at: usize) -> Result<usize, ProtocolError> {
    match line.get(at + 1) {
        Some(&b) if !is_c_space(b) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(at + 1),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// C's isspace in the "C" locale, which sdssplitargs uses between words.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> RequestParser {
        RequestParser::new(ParseLimits::default())
    }

    fn small() -> RequestParser {
        RequestParser::new(ParseLimits { max_bulk_bytes: 16, max_args: 4, max_inline_bytes: 32 })
    }

    /// Every command in `input` (fed at once), and the first error if any.
    fn parse_all(mut p: RequestParser, input: &[u8]) -> (Vec<Vec<Bytes>>, Option<ProtocolError>) {
        let mut buf = BytesMut::from(input);
        let mut commands = Vec::new();
        loop {
            match p.next(&mut buf) {
                Ok(Some(args)) => commands.push(args),
                Ok(None) => return (commands, None),
                Err(e) => return (commands, Some(e)),
            }
        }
    }

    fn cmd(args: &[&str]) -> Vec<Bytes> {
        args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn error_of(p: RequestParser, input: &[u8]) -> String {
        match parse_all(p, input).1 {
            Some(e) => e.to_string(),
            None => panic!("no error for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn pipelined_commands_in_one_buffer() {
        let input = b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nGET k\r\n*2\r\n$3\r\nGET\r\n$1";
        let mut buf = BytesMut::from(&input[..]);
        let mut p = parser();
        assert_eq!(p.next(&mut buf), Ok(Some(cmd(&["PING"]))));
        assert_eq!(p.next(&mut buf), Ok(Some(cmd(&["SET", "k", ""]))));
        assert_eq!(p.next(&mut buf), Ok(Some(cmd(&["GET", "k"]))));
        assert_eq!(p.next(&mut buf), Ok(None));
        // The complete elements of the unfinished command are consumed; the partial header is not.
        assert_eq!(&buf[..], b"$1");
        buf.extend_from_slice(b"\r\nk");
        assert_eq!(p.next(&mut buf), Ok(None));
        // A bulk header, once complete, is consumed and remembered.
        assert_eq!(&buf[..], b"k");
        buf.extend_from_slice(b"\r\n");
        assert_eq!(p.next(&mut buf), Ok(Some(cmd(&["GET", "k"]))));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_split_point_gives_the_same_commands() {
        let input: &[u8] =
            b"*2\r\n$3\r\nGET\r\n$5\r\nke\r\ny\r\n*0\r\nSET  \"a b\" 'c'\r\n\r\n*-1\r\n*1\r\n$4\r\nPING\r\nPING\n";
        let (whole, err) = parse_all(parser(), input);
        assert_eq!(err, None);
        assert_eq!(whole, vec![cmd(&["GET", "ke\r\ny"]), cmd(&["SET", "a b", "c"]), cmd(&["PING"]), cmd(&["PING"])]);
        for split in 0..=input.len() {
            let mut p = parser();
            let mut buf = BytesMut::from(&input[..split]);
            let mut got = Vec::new();
            while let Some(args) = p.next(&mut buf).expect("valid input") {
                got.push(args);
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(args) = p.next(&mut buf).expect("valid input") {
                got.push(args);
            }
            assert_eq!(got, whole, "split at {split}");
            assert!(buf.is_empty());
        }
        // And one byte at a time.
        let mut p = parser();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(args) = p.next(&mut buf).expect("valid input") {
                got.push(args);
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn large_bulk_in_small_reads_is_not_rescanned() {
        let value: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut input = format!("*2\r\n$3\r\nSET\r\n${}\r\n", value.len()).into_bytes();
        let header_len = input.len();
        input.extend_from_slice(&value);
        input.extend_from_slice(b"\r\n");

        let mut p = parser();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut result = None;
        for piece in input.chunks(100) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            result = p.next(&mut buf).expect("valid input");
            if result.is_some() {
                break;
            }
            // Once the headers are consumed, only the payload received so far stays buffered:
            // the parser waits on a remembered length instead of reparsing from `*`.
            if fed >= header_len {
                assert_eq!(buf.len(), fed - header_len);
            }
        }
        assert_eq!(fed, input.len());
        let args = result.expect("complete after the last piece");
        assert_eq!(args.len(), 2);
        assert_eq!(&args[0][..], b"SET");
        assert_eq!(&args[1][..], &value[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn protocol_error_messages() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "Protocol error: invalid multibulk length"),
            (b"*99999999999999999999\r\n", "Protocol error: invalid multibulk length"),
            (b"*+1\r\n", "Protocol error: invalid multibulk length"),
            (b"* 1\r\n", "Protocol error: invalid multibulk length"),
            (b"*01\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\rx", "Protocol error: invalid multibulk length"),
            (b"*111111111111111111111111111111111", "Protocol error: too big mbulk count string"),
            (b"*5\r\n", "Protocol error: too many arguments (5; the limit is 4)"),
            (b"*1\r\n*1\r\n", "Protocol error: expected '$', got '*'"),
            (b"*1\r\n\x01", "Protocol error: expected '$', got '\\x01'"),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$99999999999999999999999\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$1111111111111111111111111111111111", "Protocol error: too big bulk count string"),
            (b"*1\r\n$17\r\n", "Protocol error: bulk string is 17 bytes; the limit is 16 bytes (max_value_bytes)"),
            (b"*1\r\n$2\r\nabc\r\n", "Protocol error: bulk string not terminated by CRLF"),
            (&[b'a'; 35], "Protocol error: too big inline request"),
            (b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", "Protocol error: too big inline request"),
            (b"a b c d e\r\n", "Protocol error: too many arguments (5; the limit is 4)"),
            (b"SET \"k\r\n", "Protocol error: unbalanced quotes in request"),
            (b"SET 'k\r\n", "Protocol error: unbalanced quotes in request"),
            (b"SET \"k\"v\r\n", "Protocol error: unbalanced quotes in request"),
            (b"SET 'k'v\r\n", "Protocol error: unbalanced quotes in request"),
            (b"SET \"k\\\r\n", "Protocol error: unbalanced quotes in request"),
        ];
        for (input, message) in cases {
            assert_eq!(error_of(small(), input), *message, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let (commands, err) = parse_all(small(), b"*4\r\n$16\r\n0123456789abcdef\r\n$0\r\n\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(err, None);
        assert_eq!(commands, vec![cmd(&["0123456789abcdef", "", "a", "b"])]);
        let line = [b'a'; 32];
        let (commands, err) = parse_all(small(), &[&line[..], b"\r\n"].concat());
        assert_eq!(err, None);
        assert_eq!(commands.len(), 1);
    }

    #[test]
    fn errors_are_sticky() {
        let mut p = small();
        let mut buf = BytesMut::from(&b"*x\r\n*1\r\n$4\r\nPING\r\n"[..]);
        assert_eq!(p.next(&mut buf), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(p.next(&mut buf), Err(ProtocolError::InvalidMultibulkLength));
    }

    #[test]
    fn inline_quotes_and_escapes() {
        let (commands, err) = parse_all(
            parser(),
            b"SET k \"a\\x41\\n\\r\\t\\b\\a\\\\\\\"\\q\\xZZ\" \r\n\
              SET 'it\\'s' 'back\\slash \"x\"'\n\
              \t GET  \"\"  ''\x0b\r\n\
              a\"b c\" d\n",
        );
        assert_eq!(err, None);
        assert_eq!(
            commands,
            vec![
                vec![
                    Bytes::from_static(b"SET"),
                    Bytes::from_static(b"k"),
                    Bytes::from_static(b"aA\n\r\t\x08\x07\\\"qxZZ")
                ],
                cmd(&["SET", "it's", "back\\slash \"x\""]),
                cmd(&["GET", "", ""]),
                cmd(&["ab c", "d"]),
            ]
        );
    }

    #[test]
    fn empty_commands_are_skipped() {
        let (commands, err) = parse_all(parser(), b"*0\r\n*-1\r\n\r\n\n   \t\r\n*-5\r\nPING\r\n*0\r\n");
        assert_eq!(err, None);
        assert_eq!(commands, vec![cmd(&["PING"])]);
        let (commands, err) = parse_all(parser(), b"*-0\r\n");
        assert_eq!((commands, err), (vec![], Some(ProtocolError::InvalidMultibulkLength)));
    }

    #[test]
    fn huge_announced_count_allocates_nothing_up_front() {
        let mut p = parser();
        let mut buf = BytesMut::from(&b"*1048576\r\n"[..]);
        assert_eq!(p.next(&mut buf), Ok(None));
        match &p.state {
            State::Multibulk(m) => assert!(m.args.capacity() <= MAX_PREALLOCATED_ARGS),
            other => panic!("unexpected state {other:?}"),
        }
    }

    #[test]
    fn bulk_payload_is_binary_safe() {
        let (commands, err) = parse_all(parser(), b"*2\r\n$3\r\nGET\r\n$4\r\n\0\r\n*\r\n");
        assert_eq!(err, None);
        assert_eq!(commands, vec![vec![Bytes::from_static(b"GET"), Bytes::from_static(b"\0\r\n*")]]);
    }
}
