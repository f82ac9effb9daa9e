//! The desktop end to end: a device agent serving a real X server (Xvfb), the relay, and a
//! technician's real VNC viewer (vncdotool) through `kubectl tether vnc`.

use tether_e2e::desktop::Xvfb;

#[test]
fn the_x_servers_own_capture_reads_the_screen() {
    let x = Xvfb::start(320, 200);
    x.run("xsetroot", &["-solid", "#3366cc"]);
    let screen = x.capture();
    assert_eq!((screen.width, screen.height), (320, 200));
    assert_eq!(screen.at(5, 5), [0x33, 0x66, 0xcc]);
}
