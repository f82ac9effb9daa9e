//! Tests of list, get and describe: inventory, approvers, time left and timelines.

use super::*;

fn session(phase: &str, expires_at: &str) -> RemoteSession {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "metadata": {"name": "help", "namespace": "kiosks"},
        "spec": {"device": "laptop"},
        "status": {"phase": phase, "expiresAt": expires_at},
    }))
    .unwrap()
}

fn device(status: serde_json::Value) -> Device {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
        "metadata": {"name": "laptop\u{1b}[31m", "namespace": "kiosks"},
        "spec": {},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn the_inventory_says_now_while_online_and_keeps_the_last_report_offline() {
    let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
    // Connected for eleven minutes: seen now, not "11m".
    let online = device(serde_json::json!({
        "presence": "Online", "lastSeen": "2026-01-01T11:49:00Z",
        "hostname": "reception", "os": "Linux 6.8", "agentVersion": "0.1.0",
    }));
    let row = &device_rows(&[online], now, false)[0];
    assert_eq!(
        row[1..6],
        ["Online", "reception", "Linux 6.8", "0.1.0", "now"]
    );
    // Offline: the last report, and how long ago it was seen.
    let offline = device(serde_json::json!({
        "presence": "Offline", "lastSeen": "2026-01-01T11:59:00Z",
        "offlineSince": "2026-01-01T11:30:00Z",
        "hostname": "reception", "os": "Linux 6.8", "agentVersion": "0.1.0",
    }));
    let row = &device_rows(&[offline], now, false)[0];
    assert_eq!(
        row[1..6],
        ["Offline", "reception", "Linux 6.8", "0.1.0", "30m ago"]
    );
    // The device's name is escaped; a device never seen says so.
    let never = device(serde_json::json!({}));
    let row = &device_rows(&[never], now, false)[0];
    assert!(!row[0].contains('\u{1b}'), "{row:?}");
    assert_eq!(row[5], "never");
}

#[test]
fn a_new_round_shows_no_approver_of_the_previous_one() {
    let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
    let request = |round: i64| -> AssistanceRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "AssistanceRequest",
            "metadata": {"name": "vpn", "namespace": "kiosks"},
            "spec": {"device": "laptop", "requester": {"name": "Dana"}, "reason": "VPN"},
            "status": {"phase": "Pending", "round": round,
                       "approval": {"round": 1, "decision": "Approved", "approver": "bob"}},
        }))
        .unwrap()
    };
    assert_eq!(request_rows(&[request(2)], now, false)[0][4], "-");
    // Positive control: the current round's approver is shown.
    assert_eq!(request_rows(&[request(1)], now, false)[0][4], "bob");
}

#[test]
fn time_left_reads_like_a_person_would_say_it() {
    let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let left =
        |phase: &str, end: &str| session_rows(&[session(phase, end)], now, false)[0][4].clone();
    assert_eq!(left("Active", "2026-01-01T00:45:00Z"), "45m00s");
    assert_eq!(left("Active", "2026-01-03T03:00:00Z"), "2d3h");
    assert_eq!(left("Scheduled", "2029-04-01T00:00:00Z"), "1186d0h");
    // Over, or ended: nothing left.
    assert_eq!(left("Active", "2025-12-31T23:00:00Z"), "-");
    assert_eq!(left("Expired", "2026-01-01T00:45:00Z"), "-");
}

#[test]
fn timeline_columns_line_up() {
    let at = |s: &str| s.parse::<Timestamp>().unwrap();
    let text = timeline_text(&[
        (
            at("2026-01-01T00:00:00Z"),
            "vpn".into(),
            "Approved".into(),
            "approved by bob".into(),
        ),
        (
            at("2026-01-01T00:00:01.123456789Z"),
            "a-much-longer-session-name-1".into(),
            "AgentConnected".into(),
            "the agent connected".into(),
        ),
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for needle in ["Approved", "approved by"] {
        let (first, second) = (
            lines[0].find(needle).unwrap(),
            lines[1]
                .find(if needle == "Approved" {
                    "AgentConnected"
                } else {
                    "the agent"
                })
                .unwrap(),
        );
        assert_eq!(first, second, "{text}");
    }
    assert!(
        lines[1].starts_with("  2026-01-01 00:00:01Z   a-much"),
        "{text}"
    );
}
