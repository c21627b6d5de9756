//! A TCP proxy a test owns in front of RabbitMQ or Postgres: cutting it closes every
//! connection at once, as a restart or a network fault would, without disturbing other tests
//! that share the services.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Forwards 127.0.0.1:<port> to `upstream` until `cut` is notified, which closes every
/// connection it carries (new connections are accepted again afterwards).
pub struct Proxy {
    pub port: u16,
    cut: Arc<Notify>,
    /// While set, new connections are closed at once (the server is down).
    down: Arc<AtomicBool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Notify::new());
        let cut2 = cut.clone();
        let down = Arc::new(AtomicBool::new(false));
        let down2 = down.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if down2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            down,
            task,
        }
    }

    /// Takes the upstream down (every connection cut, new ones refused) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut_all();
        }
    }

    pub fn cut_all(&self) {
        self.cut.notify_waiters();
    }
}
