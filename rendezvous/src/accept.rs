//! One accept loop for every listener of the server (the control port, exposed TCP
//! ports, the HTTP vhost, STUN over TCP, classic mode): a cap on the connections served at once
//! (more wait in the kernel's backlog), a backoff when `accept` fails (out of file
//! descriptors: the loop must neither spin nor flood the log), every connection task
//! on the server's [`TaskTracker`], and an end when its token is cancelled.

use std::{future::Future, net::SocketAddr, sync::Arc};

use common::defaults::{ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

use crate::limit::LogLimit;

/// Accepts on `listener` until `stop` is cancelled, at most `limit.available_permits()`
/// connections at once. `handler` gets each connection and returns the future that
/// serves it (spawned on `tracker`, holding a permit until it ends), or `None` if it
/// turned the connection away. The handler's future must end on its own when the
/// server shuts down (it selects on a token, or is bounded).
pub(crate) async fn serve<F, Fut>(
    what: &'static str,
    listener: &TcpListener,
    limit: Arc<Semaphore>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    mut handler: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    let mut log = LogLimit::default();
    let mut at_cap = LogLimit::default();
    loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(suppressed) = at_cap.ready(tokio::time::Instant::now()) {
                    warn!(
                        suppressed,
                        "{what}: at its limit of connections at once; new ones wait"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            acc = listener.accept() => acc,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                if let Some(fut) = handler(stream, addr) {
                    tracker.spawn(async move {
                        fut.await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                // EMFILE and friends: wait (longer each time) instead of spinning.
                if let Some(suppressed) = log.ready(tokio::time::Instant::now()) {
                    warn!(%e, suppressed, retry_in = ?backoff, "{what}: accept failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_and_all_tasks_are_tracked() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(2));
        let hold = CancellationToken::new();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let looping = {
            let (tracker, stop, limit, hold, served) = (
                tracker.clone(),
                stop.clone(),
                limit.clone(),
                hold.clone(),
                served.clone(),
            );
            tokio::spawn(async move {
                serve("test", &l, limit, &tracker, &stop, |s, _| {
                    served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let hold = hold.clone();
                    Some(async move {
                        hold.cancelled().await;
                        drop(s);
                    })
                })
                .await
            })
        };
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(tracker.len(), 2);
        hold.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
        stop.cancel();
        looping.await.unwrap();
        tracker.close();
        tracker.wait().await;
        assert_eq!(tracker.len(), 0);
    }
}
