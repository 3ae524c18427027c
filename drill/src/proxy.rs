//! A TCP proxy that plays the virtual IP (or load balancer) in front of PostgreSQL: the
//! services and the relay connect to it, and a failover moves it to the promoted server,
//! cutting every connection it carried, as a VIP move does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    target: Arc<AtomicU16>,
    /// Bumped on every move: connections of an older generation end.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let target = Arc::new(AtomicU16::new(target));
        let (generation, _) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(listener, target.clone(), generation.clone()));
        Ok(Proxy {
            port,
            target,
            generation,
            accept,
        })
    }

    /// Points the proxy at `target` and cuts every connection it carried.
    pub fn move_to(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn target(&self) -> u16 {
        self.target.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection task watches the generation and ends with it.
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: Arc<AtomicU16>,
    generation: watch::Sender<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let to = SocketAddr::from(([127, 0, 0, 1], target.load(Ordering::SeqCst)));
        let mut moved = generation.subscribe();
        moved.mark_unchanged();
        tokio::spawn(async move {
            // A dead target refuses: the client sees its connection closed and retries.
            let Ok(server) = TcpStream::connect(to).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => {}
                _ = moved.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on a free port that prefixes each answer with `tag`.
    async fn echo(tag: u8) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).await.is_ok() {
                        if s.write_all(&[tag, b[0]]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    async fn ask(port: u16, byte: u8) -> std::io::Result<[u8; 2]> {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(&[byte]).await?;
        let mut out = [0u8; 2];
        c.read_exact(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_move_sends_new_connections_to_the_new_target_and_cuts_the_old_ones() {
        let (a, b) = (echo(b'a').await, echo(b'b').await);
        let proxy = Proxy::start(a).await.unwrap();
        assert_eq!(ask(proxy.port, 1).await.unwrap(), [b'a', 1]);

        let mut held = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        held.write_all(&[2]).await.unwrap();
        let mut got = [0u8; 2];
        held.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [b'a', 2]);

        proxy.move_to(b);
        assert_eq!(proxy.target(), b);
        assert_eq!(ask(proxy.port, 3).await.unwrap(), [b'b', 3]);
        // The connection opened before the move is closed by the proxy.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            held.read_to_end(&mut rest),
        )
        .await
        .expect("the old connection ends")
        .unwrap_or(0);
        assert_eq!(n, 0, "nothing more from the old target");
    }
}
