//! The network: free local ports, and [`Proxy`], a TCP proxy in front of a server
//! (PostgreSQL) that can move to another target, as a virtual IP does at a failover, or
//! cut its clients off and let them through again, as an outage does.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::task::{JoinHandle, JoinSet};

/// The first of `n` consecutive TCP ports, all free at the time of asking, below
/// Linux's ephemeral range (32768 and up): a server started on them later cannot find
/// one taken by a client's outgoing connection, as ports from [`free_port`] can (seen:
/// a Kafka controller of a test cluster failed to bind its port).
pub fn free_port_block(n: u16) -> u16 {
    // Spread by process and time so parallel tests rarely try the same block first.
    let seed = std::process::id() as u64
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    (0..10_000u64)
        .map(|i| {
            20_000
                + ((seed.wrapping_mul(2_654_435_761) + i * 7_919) % (12_000 - u64::from(n))) as u16
        })
        .find(|p| (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("a block of free ports below 32768")
}

/// A TCP port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Where the proxy forwards, and whether it lets anyone through. Every change bumps
/// `generation`; a connection ends when the generation it was opened in is over.
#[derive(Debug, Clone, Copy)]
struct Route {
    target: SocketAddr,
    up: bool,
    generation: u64,
}

/// A TCP proxy on a free port of 127.0.0.1. Clients connect to [`Proxy::port`]; each
/// connection is forwarded to the target of the moment. [`Proxy::move_to`] and
/// [`Proxy::cut`] close every connection it carries; a target that refuses closes the
/// client's connection at once (the client sees a dead server and retries).
pub struct Proxy {
    pub port: u16,
    route: watch::Sender<Route>,
    /// The forwarding tasks; locked while a connection is admitted, so a cut never
    /// misses one.
    forwards: Arc<Mutex<JoinSet<()>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(target: impl Into<SocketAddr>) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let (route, _) = watch::channel(Route {
            target: target.into(),
            up: true,
            generation: 0,
        });
        let forwards = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn(accept_loop(listener, route.clone(), forwards.clone()));
        Ok(Proxy {
            port,
            route,
            forwards,
            accept,
        })
    }

    /// Where new connections go.
    pub fn target(&self) -> SocketAddr {
        self.route.borrow().target
    }

    /// Points the proxy at `target` and cuts every connection it carried, as a virtual
    /// IP that moves to a promoted server.
    pub fn move_to(&self, target: impl Into<SocketAddr>) {
        let target = target.into();
        self.route.send_modify(|r| {
            r.target = target;
            r.generation += 1;
        });
    }

    /// Cuts the target off: every connection is closed, and new ones are accepted and
    /// closed at once until [`Proxy::restore`]. Returns once every connection is closed.
    pub async fn cut(&self) {
        let mut forwards = self.forwards.lock().await;
        self.route.send_modify(|r| {
            r.up = false;
            r.generation += 1;
        });
        while forwards.join_next().await.is_some() {}
    }

    /// Lets connections through again after [`Proxy::cut`].
    pub async fn restore(&self) {
        let _admitting = self.forwards.lock().await;
        self.route.send_modify(|r| r.up = true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection task watches the generation and ends with it.
        self.route.send_modify(|r| r.generation += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    route: watch::Sender<Route>,
    forwards: Arc<Mutex<JoinSet<()>>>,
) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let mut forwards = forwards.lock().await;
        while forwards.try_join_next().is_some() {}
        let mut changed = route.subscribe();
        let opened = *changed.borrow_and_update();
        if !opened.up {
            continue;
        }
        forwards.spawn(async move {
            let Ok(mut server) = TcpStream::connect(opened.target).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => {}
                _ = changed.wait_for(|r| r.generation != opened.generation) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on a free port that prefixes each answer with `tag`.
    async fn echo(tag: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
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
        addr
    }

    async fn ask(port: u16, byte: u8) -> std::io::Result<[u8; 2]> {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(&[byte]).await?;
        let mut out = [0u8; 2];
        c.read_exact(&mut out).await?;
        Ok(out)
    }

    /// A connection through the proxy that has answered once.
    async fn held(port: u16, tag: u8) -> TcpStream {
        let mut held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        held.write_all(&[2]).await.unwrap();
        let mut got = [0u8; 2];
        held.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [tag, 2]);
        held
    }

    /// Reads until the proxy closes `held`; the bytes that came meanwhile.
    async fn closed(mut held: TcpStream) -> usize {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), held.read_to_end(&mut rest))
            .await
            .expect("the connection ends")
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_move_sends_new_connections_to_the_new_target_and_cuts_the_old_ones() {
        let (a, b) = (echo(b'a').await, echo(b'b').await);
        let proxy = Proxy::start(a).await.unwrap();
        assert_eq!(ask(proxy.port, 1).await.unwrap(), [b'a', 1]);
        let old = held(proxy.port, b'a').await;

        proxy.move_to(b);
        assert_eq!(proxy.target(), b);
        assert_eq!(ask(proxy.port, 3).await.unwrap(), [b'b', 3]);
        assert_eq!(closed(old).await, 0, "nothing more from the old target");
    }

    #[tokio::test]
    async fn a_cut_closes_every_connection_and_refuses_new_ones_until_restored() {
        let proxy = Proxy::start(echo(b'a').await).await.unwrap();
        let open = held(proxy.port, b'a').await;

        proxy.cut().await;
        assert_eq!(closed(open).await, 0);
        assert!(ask(proxy.port, 1).await.is_err(), "refused while cut");

        proxy.restore().await;
        assert_eq!(ask(proxy.port, 4).await.unwrap(), [b'a', 4]);
    }
}
