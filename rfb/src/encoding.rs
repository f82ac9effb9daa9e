//! Encoding numbers a viewer announces in SetEncodings (RFC 6143 §7.7 and the community
//! registry), and which of them the relay lets through.

/// Raw pixels.
pub const RAW: i32 = 0;
/// Copy a rectangle from elsewhere on the screen.
pub const COPY_RECT: i32 = 1;
/// Rise-and-run-length.
pub const RRE: i32 = 2;
/// Hextile.
pub const HEXTILE: i32 = 5;
/// Zlib-compressed raw.
pub const ZLIB: i32 = 6;
/// Tight (zlib and JPEG).
pub const TIGHT: i32 = 7;
/// Zlib run-length.
pub const ZRLE: i32 = 16;
/// JPEG quality levels for Tight, lowest (0) to highest (9).
pub const JPEG_QUALITY: std::ops::RangeInclusive<i32> = -32..=-23;
/// Compression levels for Tight and ZRLE.
pub const COMPRESS_LEVEL: std::ops::RangeInclusive<i32> = -256..=-247;
/// The cursor's shape as a pseudo-rectangle.
pub const CURSOR: i32 = -239;
/// The framebuffer was resized.
pub const DESKTOP_SIZE: i32 = -223;
/// The last rectangle of an update.
pub const LAST_RECT: i32 = -224;
/// QEMU extended key events (key codes as well as keysyms).
pub const QEMU_EXTENDED_KEY: i32 = -258;
/// The desktop's name changed.
pub const DESKTOP_NAME: i32 = -307;
/// Resizes with screen layouts, and SetDesktopSize.
pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
/// xvp: shutdown, reboot and reset of the machine. Never let through.
pub const XVP: i32 = -309;
/// Fences (ClientFence / ServerFence).
pub const FENCE: i32 = -312;
/// EnableContinuousUpdates.
pub const CONTINUOUS_UPDATES: i32 = -313;
/// The cursor's shape with an alpha channel.
pub const CURSOR_WITH_ALPHA: i32 = -314;
/// Extra mouse buttons: changes PointerEvent's length, which the filter does not parse.
pub const EXTENDED_MOUSE_BUTTONS: i32 = -316;
/// UTF-8 clipboard with formats and flow control.
pub const EXTENDED_CLIPBOARD: i32 = 0xC0A1_E5CE_u32 as i32;

/// Whether the relay lets a viewer announce `encoding`: the encodings Tether's server
/// implements or may, and the pseudo-encodings whose messages the filter understands.
/// Everything else is stripped, notably [`XVP`] (it can reboot the device) and
/// [`EXTENDED_MOUSE_BUTTONS`] (it would change the length of messages the filter parses).
pub fn allowed(encoding: i32) -> bool {
    matches!(
        encoding,
        RAW | COPY_RECT
            | RRE
            | HEXTILE
            | ZLIB
            | TIGHT
            | ZRLE
            | CURSOR
            | DESKTOP_SIZE
            | LAST_RECT
            | QEMU_EXTENDED_KEY
            | DESKTOP_NAME
            | EXTENDED_DESKTOP_SIZE
            | FENCE
            | CONTINUOUS_UPDATES
            | CURSOR_WITH_ALPHA
            | EXTENDED_CLIPBOARD
    ) || JPEG_QUALITY.contains(&encoding)
        || COMPRESS_LEVEL.contains(&encoding)
}
