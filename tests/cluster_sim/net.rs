//! tonic over turmoil's simulated TCP: the listener a simulated node serves
//! its gRPC API on, and the connector that every channel of the process
//! (node-to-node and client) dials through; and the simulated listener of its
//! Redis front end.

use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Every simulated node serves gRPC on this port of its own simulated host.
pub const GRPC_PORT: u16 = 7400;

/// Every simulated node serves the Redis protocol on this port.
pub const REDIS_PORT: u16 = 6379;

/// The address a node advertises, and clients and peers dial.
pub fn node_addr(node: u64) -> String {
    format!("{}:{GRPC_PORT}", host_name(node))
}

pub fn host_name(node: u64) -> String {
    format!("node{node}")
}

/// One accepted simulated connection, in the shape tonic's server takes.
pub struct SimConn(turmoil::net::TcpStream);

impl AsyncRead for SimConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for SimConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The connections reaching this host's gRPC port.
pub async fn incoming() -> std::io::Result<impl Stream<Item = std::io::Result<SimConn>> + Send + 'static> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", GRPC_PORT)).await?;
    Ok(futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| SimConn(stream));
        Some((next, listener))
    }))
}

/// The Redis clients reaching this host's Redis port.
pub async fn redis_incoming(node: u64) -> std::io::Result<cairn::frontend::resp::Incoming> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", REDIS_PORT)).await?;
    let local = format!("{}:{REDIS_PORT}", host_name(node));
    Ok(Box::pin(futures::stream::unfold(listener, move |listener| {
        let local = local.clone();
        async move {
            let next = listener.accept().await.map(|(stream, peer)| cairn::frontend::resp::Accepted {
                stream: Box::new(stream),
                peer: peer.to_string(),
                local,
            });
            Some((next, listener))
        }
    })))
}

/// A lazy channel whose connections are simulated TCP streams to the URI's host.
/// A plain function, so that `cairn::raftstore::transport::set_connector` can take it.
pub fn connect(endpoint: Endpoint) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(GRPC_PORT);
        let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    }))
}

/// A client's channel to one node.
pub fn channel_to(node: u64) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{}", node_addr(node)))
        .unwrap_or_else(|e| panic!("a node address is a valid URI: {e}"))
        .connect_timeout(std::time::Duration::from_secs(2));
    connect(endpoint)
}
