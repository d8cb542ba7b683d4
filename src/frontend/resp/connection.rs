//! One Redis client's connection: reads its bytes, parses commands
//! incrementally, runs them in order and writes their replies. Every client
//! is bounded: its unparsed input (`max_query_buffer_bytes`), its pending
//! output (flushed at `OUTPUT_FLUSH_BYTES`, and a client that stops reading
//! holds the connection's progress, not memory), its idle time, and the
//! shape of its commands (the parser's limits). A malformed request gets a
//! protocol error reply and the connection is closed; nothing it sent after
//! the error runs.

use super::session::{ClientInfo, Session};
use super::{commands, Accepted, ClientStream, RespServer};
use bytes::BytesMut;
use cairn_core::resp::parse::{ParseLimits, RequestParser};
use cairn_core::resp::reply::{encode, Protocol, Reply};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Replies are written out once this much is pending, so a long pipeline's
/// replies do not pile up in memory before the first one is sent.
const OUTPUT_FLUSH_BYTES: usize = 64 << 10;
/// A client that does not take its replies within this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const READ_CHUNK: usize = 16 << 10;
/// Commands of one pipeline run together at most (their replies are then written).
const MAX_PIPELINE: usize = 1024;

/// Tells a client it cannot be served, then closes its connection.
pub async fn refuse(mut stream: Box<dyn ClientStream>, message: &str) {
    let mut out = Vec::new();
    encode(&Reply::Error(message.to_string()), Protocol::Resp2, &mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

fn now_ms() -> u64 {
    crate::hlc::wall_now_ms()
}

/// Serves one client until it quits, breaks the protocol, idles out, or the node stops.
pub async fn run(server: Arc<RespServer>, client: Accepted, id: u64, mut stop: watch::Receiver<bool>) {
    let Accepted { mut stream, peer, local } = client;
    server.stats.connections.fetch_add(1, Ordering::Relaxed);
    let info = server.clients.register(ClientInfo {
        id,
        addr: peer.clone(),
        laddr: local,
        connected_ms: now_ms(),
        last_command_ms: now_ms(),
        resp: 2,
        ..Default::default()
    });
    let mut session = Session::new(info);
    let outcome = serve_client(&server, &mut stream, &mut session, &mut stop).await;
    if let Err(why) = outcome {
        tracing::debug!(client = id, %peer, "redis client disconnected: {why}");
    }
    server.clients.remove(id);
}

async fn serve_client(
    server: &RespServer,
    stream: &mut Box<dyn ClientStream>,
    session: &mut Session,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let cfg = &server.cfg;
    let limits = ParseLimits {
        // A value at the limit, plus room for the other arguments' framing.
        max_bulk_bytes: server.gw.limits.max_value_bytes.max(server.gw.limits.max_key_bytes) + 1024,
        max_args: cfg.max_args,
        max_inline_bytes: cfg.max_inline_bytes,
    };
    let mut parser = RequestParser::new(limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output: Vec<u8> = Vec::new();
    // Input taken in since the last whole command: what one command has buffered so far.
    let mut pending_bytes: usize = 0;
    let idle = (cfg.idle_timeout_secs > 0).then(|| Duration::from_secs(cfg.idle_timeout_secs));
    loop {
        // Every whole command already received runs as one pipeline (see
        // `commands::pipeline`), up to MAX_PIPELINE at a time.
        loop {
            let mut batch = Vec::new();
            let mut broken = None;
            while batch.len() < MAX_PIPELINE {
                match parser.next(&mut input) {
                    Ok(Some(args)) => {
                        pending_bytes = input.len();
                        // Nothing after QUIT runs.
                        let quit = args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"QUIT"));
                        batch.push(args);
                        if quit {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            if batch.is_empty() && broken.is_none() {
                break;
            }
            server.stats.commands.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for run in commands::pipeline::runs(server, batch, session.multi.is_some()) {
                // Encoded after the run: a HELLO's own reply is in the protocol it chose.
                for reply in commands::pipeline::execute_run(server, session, run).await {
                    encode(&reply, session.protocol, &mut output);
                }
                if output.len() >= OUTPUT_FLUSH_BYTES {
                    write_out(stream, &mut output).await?;
                }
            }
            if session.closing {
                write_out(stream, &mut output).await?;
                return Ok(());
            }
            if let Some(e) = broken {
                server.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                encode(&Reply::Error(format!("ERR {e}")), session.protocol, &mut output);
                write_out(stream, &mut output).await?;
                linger(stream).await;
                return Err(e.to_string());
            }
        }
        write_out(stream, &mut output).await?;
        input.reserve(READ_CHUNK);
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, stream.read_buf(&mut input)).await.map_err(|_| "idle timeout")?,
                None => stream.read_buf(&mut input).await,
            }
            .map_err(|e| -> &'static str {
                tracing::debug!("redis read failed: {e}");
                "read failed"
            })
        };
        let n = tokio::select! {
            r = read => r.map_err(str::to_string)?,
            _ = stop.changed() => return Err("node stopping".into()),
        };
        if n == 0 {
            return Ok(());
        }
        pending_bytes = pending_bytes.saturating_add(n);
        // Checked before parsing, so a command bigger than the bound never completes.
        if pending_bytes > cfg.max_query_buffer_bytes {
            let message = format!(
                "ERR Protocol error: the query buffer holds {pending_bytes} bytes of one command; \
                 the limit is {} bytes (redis.max_query_buffer_bytes)",
                cfg.max_query_buffer_bytes
            );
            encode(&Reply::Error(message.clone()), session.protocol, &mut output);
            write_out(stream, &mut output).await?;
            linger(stream).await;
            return Err(message);
        }
    }
}

/// Closes gracefully after a protocol error: stops sending, then drains what the
/// client still sends for a moment, so that closing with unread input does not
/// reset the connection and destroy the error reply before the client reads it.
async fn linger(stream: &mut Box<dyn ClientStream>) {
    const DRAIN_BYTES: usize = 8 << 20;
    let _ = stream.shutdown().await;
    let mut sink = vec![0u8; READ_CHUNK];
    let mut drained = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(deadline);
    while drained < DRAIN_BYTES {
        tokio::select! {
            r = stream.read(&mut sink) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            },
            _ = &mut deadline => return,
        }
    }
}

async fn write_out(stream: &mut Box<dyn ClientStream>, output: &mut Vec<u8>) -> Result<(), String> {
    if output.is_empty() {
        return Ok(());
    }
    let written = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(output)).await;
    output.clear();
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("the client did not read its replies".into()),
    }
}
