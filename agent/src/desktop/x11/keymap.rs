//! Keysym to keycode: RFB sends keysyms, XTEST presses keycodes. The keyboard mapping says
//! which keycode carries which keysyms; a keysym on no key gets a spare keycode (one that
//! carries nothing) mapped to it for the time it is typed, as x11vnc and xdotool do.

/// X's "no symbol".
const NO_SYMBOL: u32 = 0;

/// A copy of the server's keyboard mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keymap {
    min_keycode: u8,
    per_keycode: usize,
    keysyms: Vec<u32>,
}

impl Keymap {
    /// The mapping from GetKeyboardMapping: `keysyms` holds `per_keycode` entries for each
    /// keycode from `min_keycode` on.
    pub fn new(min_keycode: u8, per_keycode: u8, keysyms: Vec<u32>) -> Self {
        Self {
            min_keycode,
            per_keycode: usize::from(per_keycode).max(1),
            keysyms,
        }
    }

    /// Entries per keycode.
    pub fn per_keycode(&self) -> u8 {
        self.per_keycode as u8
    }

    fn keycodes(&self) -> impl Iterator<Item = (u8, &[u32])> {
        self.keysyms
            .chunks(self.per_keycode)
            .enumerate()
            .filter_map(|(i, row)| {
                u8::try_from(usize::from(self.min_keycode) + i)
                    .ok()
                    .map(|code| (code, row))
            })
    }

    /// The keycode that types `keysym`: the one with it in the lowest column (unshifted
    /// before shifted), the lowest keycode among those.
    pub fn keycode(&self, keysym: u32) -> Option<u8> {
        if keysym == NO_SYMBOL {
            return None;
        }
        (0..self.per_keycode).find_map(|column| {
            self.keycodes()
                .find(|(_, row)| row.get(column) == Some(&keysym))
                .map(|(code, _)| code)
        })
    }

    /// Keycodes that carry no keysym at all, free to be remapped.
    pub fn spare(&self) -> Vec<u8> {
        self.keycodes()
            .filter(|(_, row)| row.iter().all(|k| *k == NO_SYMBOL))
            .map(|(code, _)| code)
            .collect()
    }

    /// What a remap of `keycode` to `keysym` sends to the server (every column), and the
    /// same change in this copy.
    pub fn remap(&mut self, keycode: u8, keysym: u32) -> Vec<u32> {
        let row = vec![keysym; self.per_keycode];
        let Some(i) = usize::from(keycode).checked_sub(usize::from(self.min_keycode)) else {
            return row;
        };
        let start = i * self.per_keycode;
        if let Some(slot) = self.keysyms.get_mut(start..start + self.per_keycode) {
            slot.copy_from_slice(&row);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysyms_map_to_the_unshifted_key_first_and_unknown_ones_to_spares() {
        // Keycodes 8..=11, two columns: 'a'/'A', empty, '1'/'!', 'A' alone.
        let mut map = Keymap::new(8, 2, vec![0x61, 0x41, 0, 0, 0x31, 0x21, 0x41, 0]);
        assert_eq!(map.keycode(0x61), Some(8));
        assert_eq!(map.keycode(0x21), Some(10));
        // 'A' is unshifted on 11, shifted on 8: the unshifted one wins.
        assert_eq!(map.keycode(0x41), Some(11));
        assert_eq!(map.keycode(0x20ac), None);
        assert_eq!(map.keycode(0), None);
        assert_eq!(map.spare(), vec![9]);
        assert_eq!(map.remap(9, 0x20ac), vec![0x20ac, 0x20ac]);
        assert_eq!(map.keycode(0x20ac), Some(9));
        assert!(map.spare().is_empty());
        // A keycode outside the map changes nothing.
        assert_eq!(map.remap(2, 0x20ac), vec![0x20ac, 0x20ac]);
        assert_eq!(map.remap(200, 0x20ac).len(), 2);
    }
}
