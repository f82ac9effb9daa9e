//! The agents connected to this relay, by device: each [`AgentLink`] is one agent
//! connection's handle (its control queue, the channel streams it is asked to open, what it
//! last reported), and [`Devices`] is the registry connection handlers and sessions look
//! agents up in. Who may hold a device's place is decided by [`crate::agents`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::message::{AgentInfo, Control};
use tether_transport::{Connection, FrameReader, FrameWriter};
use tokio::sync::{Notify, oneshot};

use crate::link::ControlTx;

/// A channel stream, framed, as the agent opened it.
pub type Framed = (FrameReader, FrameWriter);

/// The ping number of a takeover probe (regular pings count up from 1).
pub const PROBE_PING: u64 = 0;

/// A connected agent.
pub struct AgentLink {
    /// Connection id (distinguishes a reconnect from the old connection).
    pub id: u64,
    /// Device group.
    pub namespace: String,
    /// Device name.
    pub device: String,
    /// The connection.
    pub conn: Connection,
    /// Queue to the agent's control stream.
    pub control: ControlTx,
    joins: Mutex<HashMap<u64, oneshot::Sender<Framed>>>,
    /// What the agent last reported.
    pub info: Mutex<AgentInfo>,
    /// Woken whenever the agent sends anything (proof that it is alive).
    heard: Notify,
}

impl AgentLink {
    /// The handle of a new agent connection.
    pub fn new(
        id: u64,
        (namespace, device): (String, String),
        conn: Connection,
        control: ControlTx,
        info: AgentInfo,
    ) -> Self {
        Self {
            id,
            namespace,
            device,
            conn,
            control,
            joins: Mutex::new(HashMap::new()),
            info: Mutex::new(info),
            heard: Notify::new(),
        }
    }

    /// Notes that the agent sent something.
    pub fn heard(&self) {
        self.heard.notify_waiters();
    }

    /// Whether the agent answers a ping within `timeout` (anything it sends counts).
    pub async fn answers(&self, timeout: Duration) -> bool {
        let heard = self.heard.notified();
        tokio::pin!(heard);
        // Registered before the ping goes out, so an answer cannot slip past.
        heard.as_mut().enable();
        let probe = async {
            if self
                .control
                .send(Control::Ping { n: PROBE_PING })
                .await
                .is_err()
            {
                return false;
            }
            tokio::select! {
                () = heard => true,
                () = self.conn.closed() => false,
            }
        };
        tokio::time::timeout(timeout, probe).await.unwrap_or(false)
    }

    /// Asks the agent to open channel `id` and waits for its stream.
    pub async fn open_channel(&self, id: u64, open: Control, timeout: Duration) -> Option<Framed> {
        let (tx, rx) = oneshot::channel();
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if self.control.send(open).await.is_err() {
            return None;
        }
        let stream = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        stream
    }

    /// Hands a stream the agent opened for channel `id` to whoever asked for it; `false` if
    /// nobody is waiting (late, or never asked).
    pub fn joined(&self, id: u64, stream: Framed) -> bool {
        let waiter = self
            .joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        waiter.is_some_and(|w| w.send(stream).is_ok())
    }
}

type Key = (String, String);

/// Connected agents by (namespace, device).
#[derive(Clone, Default)]
pub struct Devices {
    agents: Arc<Mutex<HashMap<Key, Arc<AgentLink>>>>,
}

impl Devices {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<AgentLink>>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connected agent of a device, if any.
    pub fn get(&self, namespace: &str, device: &str) -> Option<Arc<AgentLink>> {
        self.lock()
            .get(&(namespace.to_owned(), device.to_owned()))
            .cloned()
    }

    /// Number of connected agents.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Registers `link` if its device has no connection; otherwise returns the one it has.
    pub fn insert_if_vacant(&self, link: &Arc<AgentLink>) -> Result<(), Arc<AgentLink>> {
        let key = (link.namespace.clone(), link.device.clone());
        let mut agents = self.lock();
        match agents.get(&key) {
            Some(existing) => Err(existing.clone()),
            None => {
                agents.insert(key, link.clone());
                Ok(())
            }
        }
    }

    /// Puts `link` in the place of connection `old` if that one still holds it.
    pub fn replace(&self, old: u64, link: &Arc<AgentLink>) -> bool {
        let key = (link.namespace.clone(), link.device.clone());
        let mut agents = self.lock();
        let same = agents.get(&key).is_some_and(|a| a.id == old);
        if same {
            agents.insert(key, link.clone());
        }
        same
    }

    /// Removes `link` if it is still its device's connection; whether it was.
    pub fn remove(&self, link: &AgentLink) -> bool {
        let key = (link.namespace.clone(), link.device.clone());
        let mut agents = self.lock();
        let current = agents.get(&key).is_some_and(|a| a.id == link.id);
        if current {
            agents.remove(&key);
        }
        current
    }
}
