//! A display's input thread: the viewers' keys and pointer events turned into presses and
//! releases in the order they came, and whatever a viewer still held released when it leaves.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tracing::debug;

use crate::desktop::backend::Input;

/// What a viewer asks of the input thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputCommand {
    /// A key by keysym.
    Key {
        /// Which viewer.
        viewer: u64,
        /// The X keysym.
        keysym: u32,
        /// Pressed or released.
        down: bool,
    },
    /// The pointer's position and buttons (RFB's mask: bit 0 is button 1).
    Pointer {
        /// Which viewer.
        viewer: u64,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
        /// Buttons held.
        buttons: u8,
    },
    /// The viewer left: release what it holds.
    Left {
        /// Which viewer.
        viewer: u64,
    },
}

/// One thing to do to the device's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Press or release a key.
    Key(u32, bool),
    /// Move the pointer.
    Move(u16, u16),
    /// Press or release a button.
    Button(u8, bool),
}

/// What each viewer holds down, so a viewer's button mask becomes presses and releases and
/// a viewer that leaves releases everything.
#[derive(Debug, Default)]
pub struct InputState {
    held: HashMap<u64, (Vec<u32>, u8)>,
}

impl InputState {
    /// The actions a command means.
    pub fn apply(&mut self, command: &InputCommand) -> Vec<Action> {
        match *command {
            InputCommand::Key {
                viewer,
                keysym,
                down,
            } => {
                let keys = &mut self.held.entry(viewer).or_default().0;
                if down {
                    if !keys.contains(&keysym) {
                        keys.push(keysym);
                    }
                } else {
                    keys.retain(|k| *k != keysym);
                }
                vec![Action::Key(keysym, down)]
            }
            InputCommand::Pointer {
                viewer,
                x,
                y,
                buttons,
            } => {
                let held = &mut self.held.entry(viewer).or_default().1;
                let mut out = vec![Action::Move(x, y)];
                out.extend(button_changes(*held, buttons));
                *held = buttons;
                out
            }
            InputCommand::Left { viewer } => {
                let Some((keys, buttons)) = self.held.remove(&viewer) else {
                    return Vec::new();
                };
                let mut out: Vec<Action> = keys
                    .into_iter()
                    .rev()
                    .map(|k| Action::Key(k, false))
                    .collect();
                out.extend(button_changes(buttons, 0));
                out
            }
        }
    }

    /// Releases everything every viewer holds.
    pub fn release_all(&mut self) -> Vec<Action> {
        let viewers: Vec<u64> = self.held.keys().copied().collect();
        viewers
            .into_iter()
            .flat_map(|viewer| self.apply(&InputCommand::Left { viewer }))
            .collect()
    }
}

/// Presses and releases that take the mask `from` to `to` (bit n is button n + 1).
fn button_changes(from: u8, to: u8) -> impl Iterator<Item = Action> {
    (0..8u8).filter_map(move |bit| {
        let mask = 1 << bit;
        match (from & mask != 0, to & mask != 0) {
            (false, true) => Some(Action::Button(bit + 1, true)),
            (true, false) => Some(Action::Button(bit + 1, false)),
            _ => None,
        }
    })
}

/// Runs the input thread of display `name` until every viewer's sender is gone, then
/// releases whatever is still held.
pub(super) fn input_loop(
    name: &str,
    mut input: Box<dyn Input>,
    mut commands: mpsc::Receiver<InputCommand>,
) {
    let mut state = InputState::default();
    let run = |actions: Vec<Action>, input: &mut dyn Input| {
        for action in actions {
            let result = match action {
                Action::Key(keysym, down) => input.key(keysym, down),
                Action::Move(x, y) => input.pointer_move(x, y),
                Action::Button(button, down) => input.button(button, down),
            };
            if let Err(e) = result {
                debug!(display = %name, ?action, error = %tether_telemetry::error_chain(&e), "Failed to inject input");
            }
        }
    };
    while let Some(command) = commands.blocking_recv() {
        let actions = state.apply(&command);
        run(actions, input.as_mut());
    }
    let actions = state.release_all();
    run(actions, input.as_mut());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    #[test]
    fn button_masks_become_presses_and_releases_and_leaving_releases_all() {
        let mut state = InputState::default();
        let pointer = |viewer, buttons| InputCommand::Pointer {
            viewer,
            x: 5,
            y: 6,
            buttons,
        };
        assert_eq!(
            state.apply(&pointer(1, 0b1)),
            vec![Action::Move(5, 6), Action::Button(1, true)]
        );
        // Wheel down: bit 4 pressed then released is button 5.
        assert_eq!(
            state.apply(&pointer(1, 0b1_0001)),
            vec![Action::Move(5, 6), Action::Button(5, true)]
        );
        assert_eq!(
            state.apply(&pointer(1, 0b1)),
            vec![Action::Move(5, 6), Action::Button(5, false)]
        );
        let key = |viewer, keysym, down| InputCommand::Key {
            viewer,
            keysym,
            down,
        };
        state.apply(&key(1, 0xffe1, true)); // Shift
        state.apply(&key(1, 0x61, true));
        state.apply(&key(1, 0x61, false));
        state.apply(&key(2, 0x62, true));
        assert_eq!(
            state.apply(&InputCommand::Left { viewer: 1 }),
            vec![Action::Key(0xffe1, false), Action::Button(1, false)]
        );
        assert!(state.apply(&InputCommand::Left { viewer: 1 }).is_empty());
        assert_eq!(state.release_all(), vec![Action::Key(0x62, false)]);
    }
}
