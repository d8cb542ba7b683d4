//! The Redis protocol front end (`cairn_core::resp`): arbitrary client bytes
//! arriving in two reads, whose split must not change what is parsed, and
//! the encoding of replies built from what was parsed.
#![no_main]

use bytes::{Bytes, BytesMut};
use cairn_core::resp::{encode, ParseLimits, Protocol, ProtocolError, Reply, RequestParser};
use libfuzzer_sys::fuzz_target;

fn parser() -> RequestParser {
    RequestParser::new(ParseLimits { max_bulk_bytes: 1024, max_args: 64, max_inline_bytes: 256 })
}

/// Every command parsed from `reads` fed in turn, and the error that would close the connection.
fn parse(reads: &[&[u8]]) -> (Vec<Vec<Bytes>>, Option<ProtocolError>) {
    let mut parser = parser();
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut given = 0;
    for read in reads {
        buf.extend_from_slice(read);
        given += read.len();
        loop {
            let before = buf.len();
            let next = parser.next(&mut buf);
            assert!(buf.len() <= before, "the parser only consumes");
            match next {
                Ok(Some(args)) => {
                    assert!(buf.len() < before, "a command consumes its bytes");
                    assert!(!args.is_empty(), "empty commands are skipped");
                    commands.push(args);
                }
                Ok(None) => break,
                Err(e) => return (commands, Some(e)),
            }
        }
    }
    let consumed = given - buf.len();
    assert!(commands.iter().flatten().map(|a| a.len()).sum::<usize>() <= consumed);
    (commands, None)
}

/// A simple string built from client bytes still occupies exactly one line.
fn check_one_line(text: &str) {
    let mut out = Vec::new();
    encode(&Reply::Simple(text.to_owned()), Protocol::Resp3, &mut out);
    assert!(out.ends_with(b"\r\n"));
    assert!(!out[..out.len() - 2].iter().any(|&b| b == b'\r' || b == b'\n'));
}

fuzz_target!(|data: &[u8]| {
    let split = data.last().map_or(0, |&b| usize::from(b) * data.len() / 256);
    let (commands, error) = parse(&[&data[..split], &data[split..]]);
    assert_eq!((commands.clone(), error), parse(&[data]), "the read boundary changes nothing");

    for args in &commands {
        // A command's arguments as an array of bulks: in RESP2 exactly the multibulk request form.
        let reply = Reply::Array(args.iter().cloned().map(Reply::Bulk).collect());
        let mut resp2 = Vec::new();
        encode(&reply, Protocol::Resp2, &mut resp2);
        let mut resp3 = Vec::new();
        encode(&reply, Protocol::Resp3, &mut resp3);
        assert_eq!(resp2, resp3, "arrays of bulks are the same in both protocols");

        let mut buf = BytesMut::from(&resp2[..]);
        assert_eq!(parser().next(&mut buf), Ok(Some(args.clone())), "re-encoded commands parse the same");
        assert!(buf.is_empty());

        let text = String::from_utf8_lossy(&args[0]);
        check_one_line(&text);
        let pairs =
            args.chunks(2).map(|p| (Reply::Bulk(p[0].clone()), p.get(1).cloned().map_or(Reply::Nil, Reply::Bulk)));
        let mixed = Reply::Push(vec![
            Reply::Map(pairs.collect()),
            Reply::Set(vec![Reply::Verbatim(text.into_owned()), Reply::Double(args.len() as f64 / 3.0)]),
            Reply::Error(format!("ERR {}", String::from_utf8_lossy(&args[args.len() - 1]))),
        ]);
        for proto in [Protocol::Resp2, Protocol::Resp3] {
            encode(&mixed, proto, &mut Vec::new());
        }
    }
});
