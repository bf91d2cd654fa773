//! A control connection that comes back: connects to the server, reconnects with
//! backoff when it goes away ([`Backoff`]: at most a second, jittered, while the
//! outage is young, so a restarted server has its peers back at once; then doubling;
//! reset after stable uptime, rathole's pattern), replays the registration, and routes the server's per-session messages to
//! the session's task.
//!
//! Links do not depend on it: a direct link keeps working while the server is gone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    backoff::Backoff,
    defaults::NAT_MAPPING_WAIT,
    proto::{ClientMsg, ServerMsg},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::client::{ClientError, Control, ServerConfig};

type Routes = Arc<Mutex<RouteTable>>;

/// Session messages by ticket. A message for a ticket whose task has not asked for it
/// yet (the other peer's proof can overtake the owner's handling of `Incoming`) waits
/// in `pending` until [`Hub::route`] is called for it.
#[derive(Default, Debug)]
struct RouteTable {
    routes: HashMap<u64, mpsc::Sender<ServerMsg>>,
    pending: HashMap<u64, (Instant, Vec<ServerMsg>)>,
}

/// How long a held session message waits for its route before it is dropped.
const PENDING_TTL: Duration = Duration::from_secs(30);

/// Most tickets with messages waiting for their route, and messages per ticket: a
/// route is asked for within moments of the message that names the ticket, so a
/// few are plenty; the bound keeps a misbehaving server from filling memory.
const MAX_PENDING_TICKETS: usize = 64;
const MAX_PENDING_PER_TICKET: usize = 8;

/// What the hub tells its owner besides routed session messages.
#[derive(Debug)]
pub enum HubEvent {
    /// Connected (again); the registration, if any, was sent.
    Up,
    /// The connection is gone; reconnecting.
    Down(String),
    /// A message not about a routed session (`Paired`, `Incoming`, `Refused`, ...).
    Msg(ServerMsg),
    /// The server refused the connection itself (a wrong token): reconnecting cannot help.
    Fatal(ClientError),
}

/// Handle to the hub task.
#[derive(Debug)]
pub struct Hub {
    /// Requests to the server; dropped while the connection is down.
    pub tx: mpsc::Sender<ClientMsg>,
    /// Events for the owner.
    pub events: mpsc::Receiver<HubEvent>,
    routes: Routes,
    /// `Ok` while connected; otherwise why not.
    state: watch::Receiver<Result<(), String>>,
    task: JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    /// Starts the hub; `hello` is sent after every (re)connection (e.g. `Register`).
    pub fn start(cfg: ServerConfig, hello: Vec<ClientMsg>) -> Hub {
        let (tx, out_rx) = mpsc::channel(64);
        let (ev_tx, events) = mpsc::channel(64);
        let routes: Routes = Arc::default();
        // The NAT mapping measurement and the router's port mapping discovery run
        // alongside the first connection.
        let c = cfg.clone();
        tokio::spawn(async move { crate::natcheck::own_nat(&c).await });
        let (state_tx, state) = watch::channel(Err("connecting".to_string()));
        let task = tokio::spawn(run(cfg, hello, out_rx, ev_tx, routes.clone(), state_tx));
        Hub {
            tx,
            events,
            routes,
            state,
            task,
        }
    }

    /// Waits until the hub is connected to the server, at most `wait`; otherwise says
    /// why it is not.
    pub async fn wait_up(&self, wait: Duration) -> Result<(), String> {
        let mut state = self.state.clone();
        let up = tokio::time::timeout(wait, state.wait_for(|s| s.is_ok()))
            .await
            .map(|r| r.is_ok());
        match up {
            Ok(true) => Ok(()),
            Ok(false) => Err("internal: hub stopped".into()),
            Err(_) => Err(match &*self.state.borrow() {
                Err(why) => why.clone(),
                Ok(()) => "connecting".into(),
            }),
        }
    }

    /// Routes the server's messages about session `ticket` to the returned receiver
    /// (until it is dropped).
    pub fn route(&self, ticket: u64) -> mpsc::Receiver<ServerMsg> {
        let (tx, rx) = mpsc::channel(16);
        let mut table = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        table.routes.retain(|_, tx| !tx.is_closed());
        for m in table
            .pending
            .remove(&ticket)
            .map(|p| p.1)
            .unwrap_or_default()
        {
            let _ = tx.try_send(m);
        }
        table.routes.insert(ticket, tx);
        rx
    }
}

fn ticket_of(msg: &ServerMsg) -> Option<u64> {
    match msg {
        ServerMsg::PeerGone { session, .. }
        | ServerMsg::Repunch { session, .. }
        | ServerMsg::PeerProof { session, .. } => Some(*session),
        _ => None,
    }
}

async fn run(
    cfg: ServerConfig,
    hello: Vec<ClientMsg>,
    mut out_rx: mpsc::Receiver<ClientMsg>,
    events: mpsc::Sender<HubEvent>,
    routes: Routes,
    state: watch::Sender<Result<(), String>>,
) {
    let mut backoff = Backoff::default();
    let started = Instant::now();
    let mut ever_up = false;
    loop {
        let mut control = match Control::connect(&cfg).await {
            Ok(c) => c,
            // A wrong token stays wrong; so does a wrong port, until we were ever up
            // (a server restarting behind a port another program held a moment).
            Err(e @ ClientError::Refused(_)) if e.is_permanent() => {
                let _ = events.send(HubEvent::Fatal(e)).await;
                return;
            }
            Err(e) if !ever_up && e.is_permanent() => {
                let _ = events.send(HubEvent::Fatal(e)).await;
                return;
            }
            Err(e) if !ever_up && cfg.start_wait.is_some_and(|w| started.elapsed() >= w) => {
                let e = ClientError::GaveUp {
                    waited: cfg.start_wait.unwrap_or_default(),
                    last: Box::new(e),
                };
                let _ = events.send(HubEvent::Fatal(e)).await;
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(%e, retry_in = ?delay, "cannot reach the rendezvous server");
                let _ = state.send_replace(Err(e.to_string()));
                // Nobody may be reading events during a long outage: never block on them.
                let _ = events.try_send(HubEvent::Down(e.to_string()));
                drain_while_down(&mut out_rx, delay).await;
                continue;
            }
        };
        let up_since = Instant::now();
        ever_up = true;
        for h in &hello {
            let _ = control.send(h.clone()).await;
        }
        // Before any pairing request queued meanwhile: the server pairs with it.
        if let Ok(Some(nat)) =
            tokio::time::timeout(NAT_MAPPING_WAIT, crate::natcheck::own_nat(&cfg)).await
        {
            let _ = control.send(nat).await;
        }
        info!(server = %cfg.addr, "connected to the rendezvous server");
        let _ = state.send_replace(Ok(()));
        if events.send(HubEvent::Up).await.is_err() {
            return;
        }
        let why = loop {
            tokio::select! {
                m = control.recv() => match m {
                    Ok(msg) => {
                        let msg = match ticket_of(&msg) {
                            Some(t) => {
                                let route = {
                                    let mut table = routes.lock().unwrap_or_else(|p| p.into_inner());
                                    match table.routes.get(&t).cloned() {
                                        Some(r) => Some(r),
                                        None => {
                                            table.pending.retain(|_, (at, _)| at.elapsed() < PENDING_TTL);
                                            if table.pending.len() < MAX_PENDING_TICKETS || table.pending.contains_key(&t) {
                                                let q = &mut table.pending.entry(t).or_insert_with(|| (Instant::now(), Vec::new())).1;
                                                if q.len() < MAX_PENDING_PER_TICKET {
                                                    q.push(msg.clone());
                                                }
                                            }
                                            None
                                        }
                                    }
                                };
                                match route {
                                    Some(r) => { let _ = r.send(msg).await; }
                                    None => debug!(ticket = t, "session message held until its task asks for it"),
                                }
                                continue;
                            }
                            None => msg,
                        };
                        if events.send(HubEvent::Msg(msg)).await.is_err() { return; }
                    }
                    Err(e) => break e.to_string(),
                },
                out = out_rx.recv() => match out {
                    Some(m) => if let Err(e) = control.send(m).await { break e.to_string(); },
                    None => { control.close().await; return; }
                },
            }
        };
        warn!(%why, "lost the rendezvous server; links stay up, reconnecting");
        let _ = state.send_replace(Err(why.clone()));
        // Sessions end on the server with the connection: their tasks learn it when
        // their route closes.
        {
            let mut table = routes.lock().unwrap_or_else(|p| p.into_inner());
            table.routes.clear();
            table.pending.clear();
        }
        if events.send(HubEvent::Down(why)).await.is_err() {
            return;
        }
        backoff.connected(up_since.elapsed());
        drain_while_down(&mut out_rx, backoff.next_delay()).await;
    }
}

/// Waits `d`, dropping requests meanwhile (they would be stale on a new connection).
async fn drain_while_down(out_rx: &mut mpsc::Receiver<ClientMsg>, d: Duration) {
    let until = Instant::now() + d;
    while let Ok(Some(m)) = tokio::time::timeout_at(until, out_rx.recv()).await {
        info!(?m, "dropped: not connected to the server");
    }
}
