//! A TCP proxy in front of the sandbox that the driver can close: the ABDM outage.
//!
//! Closing drops the listener (new connections are refused, as when ABDM's load balancer is
//! down) and cuts every open connection (a pooled keep-alive connection would otherwise keep
//! working through the outage). Opening binds the same port again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, io};

/// The accept loop while open: its stop switch and task.
type Serving = (CancellationToken, tokio::task::JoinHandle<()>);

/// The proxy; `open`/`close` switch it.
pub struct Proxy {
    port: u16,
    upstream: SocketAddr,
    serving: Arc<Mutex<Option<Serving>>>,
}

impl Proxy {
    /// A proxy on 127.0.0.1:`port` to `upstream`, open.
    pub async fn start(port: u16, upstream: SocketAddr) -> Result<Self> {
        let p = Self {
            port,
            upstream,
            serving: Arc::new(Mutex::new(None)),
        };
        p.open().await?;
        Ok(p)
    }

    /// Starts accepting again (no-op when open).
    pub async fn open(&self) -> Result<()> {
        let mut serving = self.serving.lock().await;
        if serving.is_some() {
            return Ok(());
        }
        let socket = TcpSocket::new_v4().map_err(io("proxy socket"))?;
        // The cut connections linger in TIME_WAIT on this port.
        socket.set_reuseaddr(true).map_err(io("proxy socket"))?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .map_err(io(format!("proxy bind 127.0.0.1:{}", self.port)))?;
        let listener = socket.listen(1024).map_err(io("proxy listen"))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(pipe(client, upstream, token.clone()));
            }
            // The listener drops here: connections are refused from now on.
        });
        *serving = Some((stop, task));
        Ok(())
    }

    /// Refuses new connections and cuts open ones (no-op when closed).
    pub async fn close(&self) {
        if let Some((stop, task)) = self.serving.lock().await.take() {
            stop.cancel();
            // Once the accept loop has ended the port is free: refused, and bindable again.
            let _ = task.await;
        }
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, stop: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}
