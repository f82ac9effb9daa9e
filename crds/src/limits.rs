//! The bounds the API server enforces on Tether objects, and the schema pieces that carry them.
//!
//! Every limit here exists because something is derived from the value: names become label
//! values, Secret names and the names of sessions; user and group names and the reason go into
//! the session token, which the relay refuses past [`tether_proto::token::MAX_TOKEN_LEN`];
//! times are read by CEL rules and by the operator, which must agree on every value. The API
//! server refuses what does not fit, so nothing it accepts can leave a session stuck.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Longest RemoteSession name: it is a label value (`tether.dev/session`) on the access
/// Secret, whose name is `<session>-access`.
pub const SESSION_NAME_MAX: usize = 63;

/// Longest AssistanceRequest name: its sessions are named `<request>-<round>`, and a session
/// name has at most [`SESSION_NAME_MAX`] characters, which leaves room for 12 digits of round.
pub const REQUEST_NAME_MAX: usize = 50;

/// Longest SessionSchedule name: its sessions are named `<schedule>-<run time in Unix
/// minutes>`, and a session name has at most [`SESSION_NAME_MAX`] characters, which leaves
/// room for ten digits of minutes (the year 2999 is nine).
pub const SCHEDULE_NAME_MAX: usize = 52;

/// Longest reference to a Device or an AssistanceRequest by name (a DNS label).
pub const REFERENCE_MAX: usize = 63;

/// Most user names, or group names, in one list (technicians, assignees).
pub const SUBJECTS_MAX: usize = 16;

/// Longest user or group name, in characters.
pub const SUBJECT_LEN_MAX: usize = 128;

/// Longest reason of a session or a request, in characters.
pub const REASON_LEN_MAX: usize = 1024;

/// Longest ticket identifier, in characters.
pub const TICKET_LEN_MAX: usize = 256;

/// Most bytes (UTF-8) that the reason and the technicians' user and group names may take
/// together. They are copied into the session token; with this bound the largest token the
/// operator can mint stays under three quarters of the relay's limit (a unit test mints it).
pub const TOKEN_TEXT_BUDGET: usize = 1536;

/// The one form of time Tether accepts (RFC 3339, as Kubernetes writes it): an uppercase `T`
/// and `Z`, at most nine fractional digits, an offset of at most 23:59, and a year from 1970
/// to 2999. CEL's `timestamp()`, the API server and the operator's parser all read every
/// value of this form.
pub const TIME_PATTERN: &str = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// Longest time string of [`TIME_PATTERN`]'s form.
pub const TIME_LEN_MAX: usize = 35;

/// CEL: the string is a DNS label (the name of an object that is also used in labels).
pub const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// CEL: the string is a DNS subdomain (an object name).
pub const DNS_SUBDOMAIN_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// CEL: no control character at all (C0, DEL, C1): for one-line text such as names.
pub const SINGLE_LINE_RULE: &str = "!self.matches('[\\\\x{0}-\\\\x{1f}\\\\x{7f}-\\\\x{9f}]')";

/// CEL: no control character but newline and tab: for free text such as a reason.
pub const TEXT_RULE: &str =
    "!self.matches('[\\\\x{0}-\\\\x{8}\\\\x{b}-\\\\x{1f}\\\\x{7f}-\\\\x{9f}]')";

/// CEL: a time of [`TIME_PATTERN`]'s form is a real date (the pattern alone accepts February
/// 30). Values of another form are left to the pattern and never parsed: a value stored before
/// the schema was strict would otherwise fail this rule on every later update of the object,
/// finalizer removal included.
pub fn time_rule() -> String {
    format!(
        "!self.matches('{}') || timestamp(self) == timestamp(self)",
        TIME_PATTERN.replace('\\', "\\\\")
    )
}

/// CEL, on an object with times `start` and optional `end`: `end` is after `start`. Checked
/// only when both have [`TIME_PATTERN`]'s form, for the reason given at [`time_rule`].
pub fn window_rule() -> String {
    let p = TIME_PATTERN.replace('\\', "\\\\");
    format!(
        "!has(self.end) || !self.start.matches('{p}') || !self.end.matches('{p}') \
         || timestamp(self.end) > timestamp(self.start)"
    )
}

/// Schema of a time Tether reads: a string of [`TIME_PATTERN`]'s form that is a real date.
///
/// Deliberately without `format: date-time`: the API server would hand such a field to CEL as
/// a timestamp, and a rule that reads a malformed value stored before this schema (the root
/// rules that compare old and new spec do) would then fail on every update, finalizer removal
/// included. As a plain string it compares without parsing.
pub fn time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": TIME_LEN_MAX,
        "pattern": TIME_PATTERN,
        "x-kubernetes-validations": [
            {"rule": time_rule(), "message": "must be a valid date and time, e.g. 2030-01-31T09:00:00Z"},
        ],
    })
}

/// [`time`], for an optional field.
pub fn optional_time(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = time(generator);
    schema.insert("nullable".into(), true.into());
    schema
}

/// Schema of a list of Kubernetes user or group names.
pub fn subjects(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": SUBJECTS_MAX,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": SUBJECT_LEN_MAX,
            "x-kubernetes-validations": [
                {"rule": SINGLE_LINE_RULE, "message": "must not contain control characters"},
            ],
        },
    })
}

/// CEL, on a spec: the reason, the ticket and the names in `list` (`technicians` or
/// `assignee`) take at most [`TOKEN_TEXT_BUDGET`] bytes together.
pub fn token_budget_rule(list: &str) -> String {
    format!(
        "(has(self.reason) ? size(bytes(self.reason)) : 0) \
         + (has(self.ticket) ? size(bytes(self.ticket)) : 0) \
         + (has(self.{list}) && has(self.{list}.users) ? self.{list}.users.map(s, size(bytes(s))).sum() : 0) \
         + (has(self.{list}) && has(self.{list}.groups) ? self.{list}.groups.map(s, size(bytes(s))).sum() : 0) \
         <= {TOKEN_TEXT_BUDGET}"
    )
}

/// Adds [`TIME_PATTERN`] to every `format: date-time` string of a schema (condition times,
/// times in status), so what any writer stores is also something every reader parses.
pub fn canonical_times(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            if map.get("format").and_then(|f| f.as_str()) == Some("date-time") {
                map.insert("pattern".into(), TIME_PATTERN.into());
                map.insert("maxLength".into(), TIME_LEN_MAX.into());
            }
            map.values_mut().for_each(canonical_times);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(canonical_times),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(text: &str) -> bool {
        serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>(text.into())
            .is_ok()
    }

    /// The largest token the operator can mint for a session the schema accepts, with every
    /// bounded string at its limit and the text that JSON escapes most (a quote becomes two
    /// bytes), stays under three quarters of what the relay accepts.
    #[test]
    fn the_largest_session_token_fits_the_relay_with_room_to_spare() {
        use tether_proto::token::{
            Claims, DesktopPermission, MAX_TOKEN_LEN, Permissions, RecordingPolicy, SessionClaims,
            SigningKey, Technicians,
        };
        let key = SigningKey::generate(format!("{}-{:08x}", i64::MAX, u32::MAX)).unwrap();
        let quotes = |n: usize| "\"".repeat(n);
        // Two shapes: one long reason and ticket, and as many short names as the lists hold.
        let reason_heavy = (
            quotes(REASON_LEN_MAX),
            vec![
                quotes(SUBJECT_LEN_MAX);
                (TOKEN_TEXT_BUDGET - REASON_LEN_MAX - TICKET_LEN_MAX) / SUBJECT_LEN_MAX
            ],
            vec![],
        );
        let per_name = TOKEN_TEXT_BUDGET / (2 * SUBJECTS_MAX);
        let names_heavy = (
            String::new(),
            vec![quotes(per_name); SUBJECTS_MAX],
            vec![quotes(per_name); SUBJECTS_MAX],
        );
        for (reason, users, groups) in [reason_heavy, names_heavy] {
            let ticket = if reason.is_empty() {
                None
            } else {
                Some(quotes(TICKET_LEN_MAX))
            };
            let text: usize = reason.len()
                + ticket.as_ref().map_or(0, String::len)
                + users.iter().map(String::len).sum::<usize>()
                + groups.iter().map(String::len).sum::<usize>();
            assert!(text <= TOKEN_TEXT_BUDGET);
            let claims = Claims::new(
                SessionClaims {
                    uid: "00000000-0000-0000-0000-000000000000".into(),
                    namespace: "n".repeat(63),
                    name: "s".repeat(SESSION_NAME_MAX),
                    device: "d".repeat(REFERENCE_MAX),
                    ends_at: i64::MAX,
                    technicians: Technicians { users, groups },
                    permissions: Permissions {
                        desktop: DesktopPermission::ViewOnly,
                        shell: true,
                        files: true,
                        chat: true,
                        processes: true,
                        clipboard: Default::default(),
                    },
                    consent: true,
                    consent_timeout: Some(u32::MAX),
                    ticket,
                    reason: Some(reason),
                    recording: RecordingPolicy::Required,
                    record_keystrokes: false,
                },
                format!("{:032x}", u128::MAX),
                i64::MAX / 2,
                i64::MAX / 2,
            );
            let token = key.mint(&claims).unwrap();
            assert!(
                token.len() <= MAX_TOKEN_LEN * 3 / 4,
                "a token of {} bytes leaves too little room under the relay's {MAX_TOKEN_LEN}",
                token.len()
            );
        }
    }

    /// Everything the pattern accepts, the operator reads: the extremes of every part.
    #[test]
    fn the_operator_reads_every_time_the_schema_accepts() {
        let re = regex::Regex::new(TIME_PATTERN).unwrap();
        for good in [
            "1970-01-01T00:00:00Z",
            "2999-12-31T23:59:59Z",
            "2999-12-31T23:59:59.999999999-23:59",
            "1970-01-01T00:00:00.000000001+23:59",
            "2030-02-28T10:00:00.5+02:00",
            "2028-02-29T10:00:00Z",
        ] {
            assert!(re.is_match(good), "{good:?} should match the pattern");
            assert!(parses(good), "{good:?} should parse");
            assert!(good.len() <= TIME_LEN_MAX, "{good:?}");
        }
        for bad in [
            "2030-01-01t10:00:00Z",
            "2030-01-01T10:00:00z",
            "2030-01-01T10:00:00.1234567890Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2030-01-01 10:00:00Z",
            "2030-01-01T10:00:00",
            "2030-01-01T10:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T10:00:60Z",
            "2030-13-01T10:00:00Z",
            "2030-01-01T10:00:00+24:00",
            "2030-01-01T10:00:00+0200",
            "tomorrow",
        ] {
            assert!(!re.is_match(bad), "{bad:?} should not match the pattern");
        }
    }
}
