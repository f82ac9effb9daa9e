//! VNC authentication (RFC 6143 §7.2.2): DES of the server's 16-byte challenge with the
//! password as the key, each key byte's bits reversed, as every VNC viewer does it; and the
//! obfuscated password file `vncpasswd` writes, which `vncviewer -passwd FILE` reads. Used by
//! `kubectl tether vnc` towards local viewers only: inside Tether the desktop channel is
//! authenticated by the relay, and VNC authentication is no protection on a network.

use des::Des;
use des::cipher::{BlockEncrypt, KeyInit};

/// Characters of a one-time password (no look-alikes).
const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A random 8-character password (VNC authentication uses 8 characters at most).
pub fn one_time_password() -> String {
    (0..8)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

fn cipher(key: &[u8]) -> Des {
    let mut k = [0u8; 8];
    for (slot, byte) in k.iter_mut().zip(key.iter()) {
        *slot = byte.reverse_bits();
    }
    Des::new(&k.into())
}

/// The response a viewer knowing `password` sends to `challenge`.
pub fn response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    let des = cipher(password.as_bytes());
    let mut out = [0u8; 16];
    for (i, half) in challenge.chunks_exact(8).enumerate() {
        let mut block = [0u8; 8];
        block.copy_from_slice(half);
        des.encrypt_block((&mut block).into());
        out[8 * i..8 * i + 8].copy_from_slice(&block);
    }
    out
}

/// The password as `vncpasswd` stores it (DES with the well-known fixed key), which
/// `vncviewer -passwd FILE` reads.
pub fn obfuscated(password: &str) -> [u8; 8] {
    // The fixed key of every VNC implementation (d3des byte order, reversed like any
    // VNC key).
    const KEY: [u8; 8] = [23, 82, 107, 6, 35, 78, 88, 7];
    let des = cipher(&KEY);
    let mut block = [0u8; 8];
    for (slot, byte) in block.iter_mut().zip(password.as_bytes()) {
        *slot = *byte;
    }
    des.encrypt_block((&mut block).into());
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnc_authentication_matches_known_answers() {
        // libvncserver's vncEncryptBytes with password "password" and an all-zero challenge
        // (the first 8 bytes are DES-ECB of zeros under the bit-reversed key).
        let r = response("password", &[0u8; 16]);
        assert_eq!(&r[..8], &r[8..], "ECB: equal blocks encrypt alike");
        assert_ne!(r, response("passwore", &[0u8; 16]));
        // Only the first 8 characters count, as in every VNC implementation.
        assert_eq!(r, response("password-and-more", &[0u8; 16]));
        // vncpasswd's file for "password" is well known.
        assert_eq!(hex::encode(obfuscated("password")), "dbd83cfd727a1458");
        let p = one_time_password();
        assert_eq!(p.len(), 8);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
