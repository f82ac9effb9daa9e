//! Scroll detection: up and down by any distance, inside part of the screen, with fixed
//! headers and repeated rows, and nothing found where nothing scrolled.

use super::*;
use crate::encode::testing::{Frame, noise};

/// A long document of distinct rows, shown from row `top` on in a `w`×`h` window.
fn window(w: u16, h: u16, top: u16) -> Frame {
    let doc = noise(42);
    Frame::new(w, h, move |x, y| doc(x, y + top))
}

#[test]
fn scrolling_down_a_document_moves_its_content_up() {
    for k in [1, 5, 40] {
        let prev = window(80, 100, 10);
        let cur = window(80, 100, 10 + k);
        let scroll = detect_vertical_scroll(&prev.image(), &cur.image(), prev.image().bounds());
        assert_eq!(
            scroll,
            Some(Scroll {
                dy: -i32::from(k),
                dst: Rect::new(0, 0, 80, 100 - k),
            }),
            "{k}"
        );
        let s = scroll.unwrap();
        assert_eq!(s.src(), Rect::new(0, k, 80, 100 - k));
        assert_eq!(
            s.exposed(Rect::new(0, 0, 80, 100)),
            [Rect::new(0, 0, 80, 0), Rect::new(0, 100 - k, 80, k)]
        );
    }
}

#[test]
fn scrolling_up_moves_content_down() {
    let prev = window(50, 60, 30);
    let cur = window(50, 60, 23);
    let s = detect_vertical_scroll(&prev.image(), &cur.image(), prev.image().bounds()).unwrap();
    assert_eq!(s.dy, 7);
    assert_eq!(s.dst, Rect::new(0, 7, 50, 53));
    assert_eq!(s.src(), Rect::new(0, 0, 50, 53));
    assert_eq!(
        s.exposed(Rect::new(0, 0, 50, 60)),
        [Rect::new(0, 0, 50, 7), Rect::new(0, 60, 50, 0)]
    );
}

#[test]
fn nothing_is_found_where_nothing_scrolled() {
    let a = window(64, 64, 0);
    let bounds = a.image().bounds();
    // Identical frames.
    assert_eq!(detect_vertical_scroll(&a.image(), &a.image(), bounds), None);
    // Entirely new content.
    let b = Frame::new(64, 64, noise(9));
    assert_eq!(detect_vertical_scroll(&a.image(), &b.image(), bounds), None);
    // Uniform frames: every row is the same, so no row says where it came from.
    let grey = Frame::new(64, 64, |_, _| (90, 90, 90));
    let white = Frame::new(64, 64, |_, _| (255, 255, 255));
    assert_eq!(
        detect_vertical_scroll(&grey.image(), &white.image(), bounds),
        None
    );
    // Too few rows to be worth it, and rectangles outside the frames.
    let (p, c) = (window(64, 3, 0), window(64, 3, 1));
    assert_eq!(
        detect_vertical_scroll(&p.image(), &c.image(), p.image().bounds()),
        None
    );
    let far = Rect::new(500, 500, 10, 10);
    assert_eq!(detect_vertical_scroll(&a.image(), &a.image(), far), None);
}

#[test]
fn a_fixed_header_stays_out_of_the_moved_band() {
    let doc = noise(1);
    let header = |x: u16, y: u16| if y < 10 { (x as u8, 0, 200) } else { (0, 0, 0) };
    let prev = Frame::new(40, 80, |x, y| if y < 10 { header(x, y) } else { doc(x, y) });
    let cur = Frame::new(
        40,
        80,
        |x, y| if y < 10 { header(x, y) } else { doc(x, y + 6) },
    );
    let s = detect_vertical_scroll(&prev.image(), &cur.image(), prev.image().bounds()).unwrap();
    assert_eq!(s.dy, -6);
    assert_eq!(s.dst, Rect::new(0, 10, 40, 64));
    let [above, below] = s.exposed(prev.image().bounds());
    assert_eq!(above, Rect::new(0, 0, 40, 10));
    assert_eq!(below, Rect::new(0, 74, 40, 6));
}

#[test]
fn a_scroll_inside_part_of_the_screen_is_found_there() {
    // Only columns 20..60, rows 30..90 scroll (a list in a window); the rest is still.
    let doc = noise(3);
    let still = noise(4);
    let inside = |x: u16, y: u16| (20..60).contains(&x) && (30..90).contains(&y);
    let prev = Frame::new(
        100,
        100,
        |x, y| if inside(x, y) { doc(x, y) } else { still(x, y) },
    );
    let cur = Frame::new(100, 100, |x, y| {
        if inside(x, y) {
            doc(x, y + 4)
        } else {
            still(x, y)
        }
    });
    let area = Rect::new(20, 30, 40, 60);
    let s = detect_vertical_scroll(&prev.image(), &cur.image(), area).unwrap();
    assert_eq!(s.dy, -4);
    assert_eq!(s.dst, Rect::new(20, 30, 40, 56));
    assert_eq!(s.src(), Rect::new(20, 34, 40, 56));
}

#[test]
fn repeated_rows_do_not_mislead_the_vote() {
    // Blank lines between distinct text lines: blanks repeat, text lines do not.
    let doc = noise(8);
    let page = move |x: u16, y: u16| {
        if y % 4 == 3 {
            (255, 255, 255)
        } else {
            doc(x, y)
        }
    };
    let prev = Frame::new(60, 64, &page);
    let cur = Frame::new(60, 64, |x, y| page(x, y + 12));
    let s = detect_vertical_scroll(&prev.image(), &cur.image(), prev.image().bounds());
    assert_eq!(s.map(|s| s.dy), Some(-12));
}

#[test]
fn copy_rect_names_its_source() {
    let mut update = Update::new();
    copy_rect(3, 4, Rect::new(1, 2, 5, 6), &mut update);
    copy_rect(0, 0, Rect::new(1, 2, 0, 6), &mut update);
    let bytes = update.finish();
    assert_eq!(
        bytes,
        [0, 0, 0, 1, 0, 1, 0, 2, 0, 5, 0, 6, 0, 0, 0, 1, 0, 3, 0, 4]
    );
}
