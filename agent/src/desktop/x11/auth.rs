//! The X authority: which Xauthority file holds the display's cookie, and the cookie in it.
//!
//! The agent usually runs as a service, with neither `DISPLAY` nor `XAUTHORITY` of the user
//! whose desktop it serves, so besides `--xauthority` and `$XAUTHORITY` it looks where
//! display managers leave the logged-on users' cookies. The cookie is a secret: it is never
//! logged, only the file it came from.

use std::path::{Path, PathBuf};

use x11rb::reexports::x11rb_protocol::xauth::Family;

/// Family "any address" in an Xauthority file.
#[cfg(test)]
const WILD: u16 = 65535;

/// The only authorization protocol the agent speaks.
const MIT_MAGIC_COOKIE: &[u8] = b"MIT-MAGIC-COOKIE-1";

/// One Xauthority entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    family: u16,
    address: Vec<u8>,
    number: Vec<u8>,
    name: Vec<u8>,
    data: Vec<u8>,
}

/// Reads the entries of an Xauthority file; a truncated entry ends the list.
fn entries(bytes: &[u8]) -> Vec<Entry> {
    fn u16_at(bytes: &[u8], at: &mut usize) -> Option<u16> {
        let b = bytes.get(*at..at.checked_add(2)?)?;
        *at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn field(bytes: &[u8], at: &mut usize) -> Option<Vec<u8>> {
        let len = usize::from(u16_at(bytes, at)?);
        let b = bytes.get(*at..at.checked_add(len)?)?;
        *at += len;
        Some(b.to_vec())
    }
    fn entry(bytes: &[u8], at: &mut usize) -> Option<Entry> {
        Some(Entry {
            family: u16_at(bytes, at)?,
            address: field(bytes, at)?,
            number: field(bytes, at)?,
            name: field(bytes, at)?,
            data: field(bytes, at)?,
        })
    }
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(e) = entry(bytes, &mut at) {
        out.push(e);
    }
    out
}

/// The cookie for display `number` reached over (`family`, `address`) in an Xauthority
/// file's `bytes`: (protocol name, data).
pub fn cookie(
    bytes: &[u8],
    family: Family,
    address: &[u8],
    number: u16,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let number = number.to_string();
    entries(bytes)
        .into_iter()
        .find(|e| {
            let entry_family = Family::from(e.family);
            let address_matches = entry_family == Family::WILD
                || family == Family::WILD
                || (entry_family == family && e.address == address);
            address_matches
                && (e.number.is_empty() || e.number == number.as_bytes())
                && e.name == MIT_MAGIC_COOKIE
        })
        .map(|e| (e.name, e.data))
}

/// The Xauthority files to look in, in order: the configured one (flag or `$XAUTHORITY`)
/// alone when there is one; else those of the logged-on `users` (`~/.Xauthority`, and GDM's
/// `/run/user/UID/gdm/Xauthority`), then the agent's own `~/.Xauthority`.
pub fn candidates(
    configured: Option<&Path>,
    users: &[String],
    own_home: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(path) = configured {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    for name in users {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            out.push(user.dir.join(".Xauthority"));
            out.push(PathBuf::from(format!(
                "/run/user/{}/gdm/Xauthority",
                user.uid
            )));
        }
    }
    if let Some(home) = own_home {
        out.push(home.join(".Xauthority"));
    }
    out.dedup();
    out
}

/// Writes an Xauthority file with one wildcard-address entry for display `number` (for
/// tests that start an X server with `-auth`).
#[cfg(test)]
pub fn file_with_cookie(number: Option<u16>, cookie: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&WILD.to_be_bytes());
    let number = number.map(|n| n.to_string()).unwrap_or_default();
    for field in [&b""[..], number.as_bytes(), MIT_MAGIC_COOKIE, cookie] {
        out.extend_from_slice(&(field.len() as u16).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(family: u16, address: &[u8], number: &[u8], name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = family.to_be_bytes().to_vec();
        for f in [address, number, name, data] {
            out.extend_from_slice(&(f.len() as u16).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn the_cookie_for_the_display_and_host_is_found() {
        let local = 256;
        let mut file = entry(local, b"other-host", b"5", MIT_MAGIC_COOKIE, b"not this");
        file.extend(entry(local, b"kiosk", b"4", MIT_MAGIC_COOKIE, b"nor this"));
        file.extend(entry(
            local,
            b"kiosk",
            b"5",
            b"XDM-AUTHORIZATION-1",
            b"unsupported",
        ));
        file.extend(entry(local, b"kiosk", b"5", MIT_MAGIC_COOKIE, b"this"));
        assert_eq!(
            cookie(&file, Family::LOCAL, b"kiosk", 5),
            Some((MIT_MAGIC_COOKIE.to_vec(), b"this".to_vec()))
        );
        assert_eq!(cookie(&file, Family::LOCAL, b"kiosk", 6), None);
        // A wildcard entry without a display number matches any display.
        let wild = file_with_cookie(None, b"any");
        assert_eq!(
            cookie(&wild, Family::LOCAL, b"kiosk", 9).map(|c| c.1),
            Some(b"any".to_vec())
        );
    }

    #[test]
    fn a_truncated_file_yields_the_entries_before_the_cut() {
        let mut file = file_with_cookie(Some(1), b"first");
        let second = file_with_cookie(Some(2), b"second");
        file.extend_from_slice(&second[..second.len() - 3]);
        assert_eq!(entries(&file).len(), 1);
        assert!(entries(&[0xff]).is_empty());
        assert_eq!(cookie(&file, Family::LOCAL, b"h", 2), None);
    }

    #[test]
    fn a_configured_file_is_the_only_candidate() {
        let only = candidates(
            Some(Path::new("/x/auth")),
            &["root".into()],
            Some(Path::new("/home/a")),
        );
        assert_eq!(only, vec![PathBuf::from("/x/auth")]);
        let found = candidates(
            None,
            &["root".into(), "no-such-user-here".into()],
            Some(Path::new("/home/a")),
        );
        assert_eq!(found[0], PathBuf::from("/root/.Xauthority"));
        assert_eq!(found.last(), Some(&PathBuf::from("/home/a/.Xauthority")));
    }
}
