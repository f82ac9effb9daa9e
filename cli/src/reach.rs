//! Reaching the relay (and the API server) from where the technician is: which HTTP proxy to
//! use (`--proxy`, else `HTTPS_PROXY` unless `NO_PROXY` names the host, as kubectl and curl
//! read them), and remembering for a while that UDP does not get through to a relay, so the
//! next command goes straight to TCP instead of giving QUIC its head start again.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use tether_transport::endpoint::{Attempt, Race};
use tether_transport::{ConnectError, Connection, Dial, Prefer};

/// How long a relay that QUIC did not reach is dialled over TCP only. Long enough to spare a
/// working session's commands the QUIC head start, short enough that moving to a network
/// where UDP works soon brings QUIC back.
const REMEMBER_UDP_BLOCKED: i64 = 30 * 60;

/// At most this many relays are remembered (the oldest expiry goes first).
const REMEMBER_AT_MOST: usize = 64;

/// The proxy from the environment: `HTTPS_PROXY`, else `https_proxy`; empty means none.
fn env_proxy() -> Option<String> {
    ["HTTPS_PROXY", "https_proxy"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// The exclusions from the environment: `NO_PROXY`, else `no_proxy`.
fn env_no_proxy() -> Option<String> {
    ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// The proxy for the relay at `relay` (`host:port`): `--proxy` when given (`none` for a
/// direct connection), else the environment's unless `NO_PROXY` names the relay.
pub fn relay_proxy(flag: Option<&str>, relay: &str) -> Option<String> {
    choose(flag, env_proxy(), env_no_proxy().as_deref(), relay)
}

fn choose(
    flag: Option<&str>,
    env: Option<String>,
    no_proxy: Option<&str>,
    relay: &str,
) -> Option<String> {
    match flag.map(str::trim) {
        Some("" | "none") => None,
        Some(proxy) => Some(proxy.to_owned()),
        None => {
            let (host, port) = split_host_port(relay);
            env.filter(|_| !no_proxy.is_some_and(|n| excluded(n, host, port)))
        }
    }
}

/// The proxy for the API server at `server` (its URL), from the environment: kube-rs reads
/// `HTTPS_PROXY` but checks `NO_PROXY` against the proxy's own address, not the server's.
/// Returns `None` when the environment has no proxy or excludes the server.
pub fn api_server_proxy(server: &http::Uri) -> Option<String> {
    let env = env_proxy()?;
    let host = server.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = server.port_u16().or(match server.scheme_str() {
        Some("http") => Some(80),
        _ => Some(443),
    });
    (!env_no_proxy().is_some_and(|n| excluded(&n, host, port))).then_some(env)
}

fn split_host_port(addr: &str) -> (&str, Option<u16>) {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        _ => (addr, None),
    }
}

/// Whether `no_proxy` (comma-separated: `*`, host names with an optional leading `.` or `*.`
/// and `:port`, IP addresses, CIDR ranges) excludes `host` on `port`. A name matches itself
/// and its subdomains, as curl and Go read it.
pub fn excluded(no_proxy: &str, host: &str, port: Option<u16>) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return match (ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            if let Ok(addr) = entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                return ip == Some(addr);
            }
            let (name, entry_port) = match entry.rsplit_once(':') {
                Some((name, p)) => match p.parse::<u16>() {
                    Ok(p) => (name, Some(p)),
                    Err(_) => return false,
                },
                None => (entry, None),
            };
            if entry_port.is_some() && entry_port != port {
                return false;
            }
            let name = name
                .trim_start_matches('*')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if let Some(parent) = name.strip_prefix('.') {
                host.ends_with(&name) || host == parent
            } else {
                host == name || host.ends_with(&format!(".{name}"))
            }
        })
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Relays that QUIC did not reach, with when to try QUIC again (Unix seconds).
#[derive(Debug, Default, PartialEq, Eq)]
struct Memory(BTreeMap<String, i64>);

impl Memory {
    /// Reads the memory; anything unreadable is forgotten (it is only a hint).
    fn parse(text: &str) -> Self {
        Self(serde_json::from_str(text).unwrap_or_default())
    }

    fn render(&self) -> String {
        serde_json::to_string_pretty(&self.0).unwrap_or_default()
    }

    /// Whether QUIC is known not to reach `relay` at `now`.
    fn udp_blocked(&self, relay: &str, now: i64) -> bool {
        self.0.get(relay).is_some_and(|until| *until > now)
    }

    /// Notes what one connection attempt showed about `relay`: whether UDP got through.
    fn learn(&mut self, relay: &str, race: &Race, now: i64) {
        self.0.retain(|_, until| *until > now);
        match (&race.quic, &race.tcp) {
            (Attempt::Chosen, _) => {
                self.0.remove(relay);
            }
            (Attempt::Failed(_) | Attempt::Abandoned, Attempt::Chosen) => {
                self.0
                    .insert(relay.to_owned(), now.saturating_add(REMEMBER_UDP_BLOCKED));
            }
            _ => {}
        }
        while self.0.len() > REMEMBER_AT_MOST {
            let Some(oldest) = self
                .0
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(relay, _)| relay.clone())
            else {
                break;
            };
            self.0.remove(&oldest);
        }
    }
}

/// Where the memory lives: the user's cache directory.
fn memory_path() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("tether").join("udp-blocked.json"))
}

fn load() -> Memory {
    memory_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| Memory::parse(&t))
        .unwrap_or_default()
}

/// Writes the memory through a temporary file, so a concurrent command never reads half of
/// it. Failing to write only costs the next command the QUIC head start.
fn store(memory: &Memory) {
    let Some(path) = memory_path() else { return };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(tmp) = tempfile::NamedTempFile::new_in(dir)
        && std::fs::write(tmp.path(), memory.render()).is_ok()
    {
        let _ = tmp.persist(&path);
    }
}

/// Connects as `dial` says. With `auto`, a relay that QUIC recently did not reach is dialled
/// over TCP alone (and raced again if that fails); every raced attempt updates the memory.
pub async fn connect(dial: &Dial) -> Result<Connection, ConnectError> {
    let now = jiff::Timestamp::now().as_second();
    if dial.prefer != Prefer::Auto {
        return dial.connect().await;
    }
    if load().udp_blocked(&dial.relay, now) {
        let tcp = Dial {
            prefer: Prefer::Tcp,
            ..dial.clone()
        };
        if let Ok(conn) = tcp.connect().await {
            return Ok(conn);
        }
    }
    let (conn, race) = dial.connect_racing().await?;
    let mut memory = load();
    let before = memory.udp_blocked(&dial.relay, now);
    memory.learn(&dial.relay, &race, now);
    if before != memory.udp_blocked(&dial.relay, now) {
        store(&memory);
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_environment_unless_no_proxy_names_the_relay() {
        let env = || Some("http://proxy:3128".to_owned());
        assert_eq!(
            choose(Some("http://other:8080"), env(), None, "relay:443").as_deref(),
            Some("http://other:8080")
        );
        assert_eq!(choose(Some("none"), env(), None, "relay:443"), None);
        assert_eq!(
            choose(None, env(), None, "relay:443").as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            choose(None, env(), Some("example.com,relay"), "relay:443"),
            None
        );
        assert_eq!(
            choose(None, env(), Some("example.com"), "relay:443").as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(choose(None, None, None, "relay:443"), None);
        // The flag is not subject to NO_PROXY: it was asked for.
        assert!(choose(Some("http://p:1"), None, Some("*"), "relay:443").is_some());
    }

    #[test]
    fn no_proxy_entries() {
        assert!(excluded("*", "anything", None));
        assert!(excluded("example.com", "example.com", Some(443)));
        assert!(excluded("example.com", "relay.example.com", Some(443)));
        assert!(excluded(".example.com", "relay.example.com", Some(443)));
        assert!(excluded("*.example.com", "relay.example.com", Some(443)));
        assert!(!excluded("example.com", "notexample.com", Some(443)));
        assert!(excluded("relay:443", "relay", Some(443)));
        assert!(!excluded("relay:8443", "relay", Some(443)));
        assert!(excluded("10.0.0.0/8", "10.1.2.3", Some(443)));
        assert!(!excluded("10.0.0.0/8", "11.1.2.3", Some(443)));
        assert!(excluded("127.0.0.1", "127.0.0.1", Some(6443)));
        assert!(excluded("::1", "::1", None));
        assert!(excluded("fd00::/8", "fd12::1", None));
        assert!(!excluded("", "relay", None));
        assert!(!excluded("10.0.0.0/99, bad:port", "10.0.0.1", None));
        assert!(excluded(
            " foo , Relay.Example.com ",
            "relay.example.com.",
            None
        ));
    }

    #[test]
    fn host_and_port_of_a_relay_address() {
        assert_eq!(split_host_port("relay:443"), ("relay", Some(443)));
        assert_eq!(split_host_port("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host_port("relay"), ("relay", None));
    }

    #[test]
    fn a_relay_quic_did_not_reach_is_remembered_until_it_expires() {
        let tcp_won = |quic| Race {
            quic,
            tcp: Attempt::Chosen,
        };
        let mut m = Memory::default();
        m.learn("relay:443", &tcp_won(Attempt::Abandoned), 1000);
        assert!(m.udp_blocked("relay:443", 1000));
        assert!(m.udp_blocked("relay:443", 1000 + REMEMBER_UDP_BLOCKED - 1));
        assert!(!m.udp_blocked("relay:443", 1000 + REMEMBER_UDP_BLOCKED));
        assert!(!m.udp_blocked("other:443", 1000), "keyed by relay");
        // It survives being written and read back; garbage reads as nothing known.
        assert_eq!(Memory::parse(&m.render()), m);
        assert_eq!(Memory::parse("not json"), Memory::default());
        // QUIC connecting again clears it; a QUIC failure notes it again.
        m.learn(
            "relay:443",
            &Race {
                quic: Attempt::Chosen,
                tcp: Attempt::NotTried,
            },
            1001,
        );
        assert!(!m.udp_blocked("relay:443", 1001));
        m.learn("relay:443", &tcp_won(Attempt::Failed("x".into())), 1002);
        assert!(m.udp_blocked("relay:443", 1002));
        // Only what a race showed counts: TCP chosen because only TCP was tried says nothing.
        let mut m = Memory::default();
        m.learn("relay:443", &tcp_won(Attempt::NotTried), 1000);
        assert!(!m.udp_blocked("relay:443", 1000));
    }

    #[test]
    fn the_memory_stays_small() {
        let mut m = Memory::default();
        for i in 0..(REMEMBER_AT_MOST as i64 + 10) {
            m.learn(
                &format!("relay-{i}:443"),
                &Race {
                    quic: Attempt::Abandoned,
                    tcp: Attempt::Chosen,
                },
                1000 + i,
            );
        }
        assert_eq!(m.0.len(), REMEMBER_AT_MOST);
        assert!(!m.udp_blocked("relay-0:443", 1100), "the oldest went first");
        assert!(m.udp_blocked(&format!("relay-{}:443", REMEMBER_AT_MOST + 9), 1100));
    }
}
