//! A Redis client on turmoil's simulated TCP, enough for the simulation's RESP
//! workloads: it sends commands as RESP arrays and reads simple replies
//! (status, error, integer, bulk, nil). A reply it cannot read, a timeout or a
//! broken connection is "no reply", and the connection is made again.

use super::net::{host_name, REDIS_PORT};
use super::resp_register::RespReply;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest reply line or bulk string the workloads expect (values are numbers).
const MAX_REPLY_BYTES: usize = 1 << 16;

pub struct SimRedis {
    node: u64,
    timeout: Duration,
    conn: Option<BufReader<turmoil::net::TcpStream>>,
}

impl SimRedis {
    pub fn new(node: u64, timeout: Duration) -> SimRedis {
        SimRedis { node, timeout, conn: None }
    }

    /// Sends one command and reads its reply; `None` when no reply came.
    pub async fn call(&mut self, args: &[String]) -> Option<RespReply> {
        let reply = tokio::time::timeout(self.timeout, self.exchange(args)).await.ok().flatten();
        if matches!(reply, None | Some(RespReply::Unexpected(_))) {
            self.conn = None;
        }
        reply
    }

    async fn exchange(&mut self, args: &[String]) -> Option<RespReply> {
        if self.conn.is_none() {
            let stream = turmoil::net::TcpStream::connect((host_name(self.node).as_str(), REDIS_PORT)).await.ok()?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut()?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        conn.get_mut().write_all(&out).await.ok()?;
        read_reply(conn).await
    }
}

async fn read_line(conn: &mut BufReader<turmoil::net::TcpStream>) -> Option<String> {
    let mut line = Vec::new();
    let n = (&mut *conn).take(MAX_REPLY_BYTES as u64).read_until(b'\n', &mut line).await.ok()?;
    if n == 0 || !line.ends_with(b"\r\n") {
        return None;
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).ok()
}

async fn read_reply(conn: &mut BufReader<turmoil::net::TcpStream>) -> Option<RespReply> {
    let line = read_line(conn).await?;
    let (kind, rest) = line.split_at_checked(1)?;
    Some(match kind {
        "+" => RespReply::Status(rest.to_string()),
        "-" => RespReply::Error(rest.to_string()),
        ":" => RespReply::Int(rest.parse().ok()?),
        "$" => {
            let len: i64 = rest.parse().ok()?;
            if len < 0 {
                return Some(RespReply::Nil);
            }
            let len = usize::try_from(len).ok().filter(|l| *l <= MAX_REPLY_BYTES)?;
            let mut body = vec![0; len + 2];
            conn.read_exact(&mut body).await.ok()?;
            if !body.ends_with(b"\r\n") {
                return None;
            }
            body.truncate(len);
            RespReply::Bulk(body)
        }
        // Arrays and RESP3 types are not what these workloads' commands answer;
        // what follows such a reply cannot be read, so the connection is dropped.
        _ => {
            let _ = conn.get_mut().shutdown().await;
            RespReply::Unexpected(line)
        }
    })
}
