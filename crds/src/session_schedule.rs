//! `SessionSchedule`: RemoteSessions stamped from a cron schedule in a time zone, the way a
//! CronJob stamps Jobs.
//!
//! The schedule is what GitOps tools apply; the sessions it stamps carry its label and an
//! owner reference to it and own nothing outside themselves, so a tool that syncs the
//! schedule never sees (or fights) its sessions. The operator computes every run in the
//! schedule's time zone, starts each session at its run time, and deletes finished sessions
//! beyond the history limits. The rules (daylight-saving changes, missed runs, concurrency)
//! are in `docs/schedules.md`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::remote_session::RemoteSessionSpec;

/// Label on every RemoteSession a schedule stamps, naming the schedule.
pub const SCHEDULE_LABEL: &str = "tether.dev/schedule";

/// The time zone of a schedule that names none.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Condition types on a SessionSchedule, written by the operator.
pub mod condition_types {
    /// `True` while the schedule stamps sessions: valid, not suspended, and its last run's
    /// session was admitted. The message names the next run.
    pub const READY: &str = "Ready";
    /// `True` when the operator cannot read the schedule or the time zone (something the
    /// schema cannot check, e.g. minute 61 or an unknown zone); the message says what.
    pub const INVALID: &str = "Invalid";
}

/// CEL: the rough shape of a schedule (five space-separated fields, or a macro). The operator
/// checks the ranges and reports a schedule it cannot read with the condition `Invalid`.
const SCHEDULE_SHAPE_RULE: &str = "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*?,/-]+( +[0-9A-Za-z*?,/-]+){4})$')";

/// Pattern of an IANA time zone name (`Europe/Madrid`, `America/Argentina/Buenos_Aires`,
/// `Etc/GMT+5`, `UTC`); the operator looks the name up in the time zone database.
const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";

/// RemoteSessions stamped from a cron schedule, shaped like a CronJob: every run of
/// `schedule` in `timeZone` creates a RemoteSession from `sessionTemplate` that starts at the
/// run time. The sessions are named `<schedule>-<run time in Unix minutes>`, labelled
/// `tether.dev/schedule=<schedule>` and owned by the schedule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "SessionSchedule",
    plural = "sessionschedules",
    shortname = "ssch",
    category = "tether",
    namespaced,
    status = "SessionScheduleStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Time-Zone","type":"string","jsonPath":".spec.timeZone"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.active"}"#,
    printcolumn = r#"{"name":"Last-Schedule","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next","type":"string","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new(format!(
        "size(self.metadata.name) <= {}",
        crate::limits::SCHEDULE_NAME_MAX
    ))
    .message(kube::core::Message::Message(format!(
        "SessionSchedule names are at most {} characters: its sessions are named <schedule>-<run time in Unix minutes>",
        crate::limits::SCHEDULE_NAME_MAX
    )))
    .reason(kube::core::Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct SessionScheduleSpec {
    /// When sessions start, in cron syntax: five fields separated by spaces, `minute hour
    /// day-of-month month day-of-week` (`0 22 * * 6` is Saturdays at 22:00), each a `*`, a
    /// number, a range `a-b`, a list `a,b` or a step `*/n` or `a-b/n`; months and days may be
    /// names (`JAN`, `SAT`), Sunday is 0 or 7. When both day fields are restricted, either
    /// matches. `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly` are accepted too. Set
    /// the time zone in `timeZone`, not with `TZ=` here.
    #[schemars(length(min = 1, max = 128), extend("x-kubernetes-validations" = [
        {"rule": SCHEDULE_SHAPE_RULE, "message": "schedule must be five cron fields separated by spaces (minute hour day-of-month month day-of-week) or a macro such as @daily; set the time zone in timeZone"},
    ]))]
    pub schedule: String,

    /// The IANA time zone the schedule is read in, e.g. `Europe/Madrid`; `UTC` when omitted.
    /// Runs follow the zone's daylight-saving changes: a run at a time the clock skips starts
    /// as many minutes after the change as it was due after the last time before it (02:30
    /// becomes 03:30), and a run at a time the clock repeats starts once, the first time,
    /// unless the schedule runs every hour, in which case it also runs the second time.
    #[serde(default = "default_time_zone")]
    #[schemars(
        default = "default_time_zone",
        length(min = 1, max = 64),
        regex(pattern = TIME_ZONE_PATTERN)
    )]
    pub time_zone: String,

    /// The RemoteSession every run creates: the fields of a RemoteSession's spec but
    /// `startTime` (the run time) and `assistanceRequest`. Changing it changes sessions
    /// stamped afterwards, not those that exist.
    pub session_template: RemoteSessionSpec,

    /// What a run does while an earlier session of the schedule has not ended: `Forbid` (the
    /// default) skips the run; `Allow` starts another session beside it; `Replace`
    /// terminates it (as `kubectl tether terminate` does, naming the operator) and starts
    /// the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// How late a run may start, in seconds, after the operator missed its time (it was not
    /// running, or the schedule was suspended). Only the most recent missed run is ever
    /// started, and only while it is at most this late and its session's window (run time
    /// plus duration) is still open; the other missed runs are skipped with an Event. Without
    /// it, the window alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,

    /// Whether runs are suspended: no session is started while it is true. Sessions that
    /// exist are left alone. A run missed while suspended follows the rule of
    /// `startingDeadlineSeconds` when the schedule is resumed.
    #[serde(default)]
    pub suspend: bool,

    /// How many ended sessions that succeeded (`Completed` or `Expired`) to keep; older ones
    /// are deleted. 3 when omitted.
    #[serde(default = "default_successful_limit")]
    #[schemars(default = "default_successful_limit", range(min = 0, max = 100))]
    pub successful_sessions_history_limit: i32,

    /// How many ended sessions that did not succeed (`Terminated`, `Denied` or `Failed`) to
    /// keep; older ones are deleted. 1 when omitted.
    #[serde(default = "default_failed_limit")]
    #[schemars(default = "default_failed_limit", range(min = 0, max = 100))]
    pub failed_sessions_history_limit: i32,
}

fn default_time_zone() -> String {
    DEFAULT_TIME_ZONE.to_owned()
}

fn default_successful_limit() -> i32 {
    3
}

fn default_failed_limit() -> i32 {
    1
}

/// What a run does while an earlier session of the schedule has not ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start the new session beside the earlier one.
    Allow,
    /// Skip the run (an Event says so).
    #[default]
    Forbid,
    /// Terminate the earlier session and start the new one.
    Replace,
}

/// What the operator last observed and decided about a schedule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionScheduleStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Latest observations of the schedule's state, one per type (`Ready`, `Invalid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The most recent run the operator has dealt with: its session was created, or the run
    /// was skipped (missed, or forbidden by `concurrencyPolicy`); Events say which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the most recent session that succeeded (`Completed` or `Expired`) ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// The next run, while the schedule is valid and not suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// The schedule's sessions that have not ended, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub active: Vec<String>,
}

/// The SessionSchedule CRD. The session template is a RemoteSession spec without the two
/// fields a schedule decides: `startTime` (each run's time) and `assistanceRequest` (a
/// schedule is not a request), so `kubectl explain` does not offer them and the API server
/// refuses them.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = SessionSchedule::crd();
    for version in &mut crd.spec.versions {
        if let Some(template) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("sessionTemplate"))
            .and_then(|t| t.properties.as_mut())
        {
            template.remove("startTime");
            template.remove("assistanceRequest");
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    fn spec(yaml: &str) -> SessionScheduleSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_those_of_a_cron_job_but_concurrency() {
        let s = spec("schedule: '0 22 * * 6'\nsessionTemplate:\n  device: db-server-01\n");
        assert_eq!(s.time_zone, "UTC");
        assert_eq!(s.concurrency_policy, ConcurrencyPolicy::Forbid);
        assert_eq!(s.successful_sessions_history_limit, 3);
        assert_eq!(s.failed_sessions_history_limit, 1);
        assert!(!s.suspend);
        assert_eq!(s.starting_deadline_seconds, None);
        assert_eq!(s.session_template.duration.as_str(), "30m");
    }

    #[test]
    fn the_template_offers_neither_start_time_nor_request() {
        let crd = serde_json::to_value(crd()).unwrap();
        let template = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["sessionTemplate"];
        let properties = template["properties"].as_object().unwrap();
        assert!(properties.contains_key("device"));
        assert!(properties.contains_key("duration"));
        assert!(!properties.contains_key("startTime"));
        assert!(!properties.contains_key("assistanceRequest"));
    }

    #[test]
    fn the_schedule_shape_rule_and_zone_pattern_accept_cron_and_refuse_prose() {
        let shape = regex::Regex::new(
            SCHEDULE_SHAPE_RULE
                .trim_start_matches("self.matches('")
                .trim_end_matches("')"),
        )
        .unwrap();
        for good in [
            "* * * * *",
            "0 22 * * 6",
            "*/15 8-18 * * MON-FRI",
            "0 0 1,15 * ?",
            "@daily",
            "61 * * * *", // the operator reports the range
        ] {
            assert!(shape.is_match(good), "{good:?}");
        }
        for bad in [
            "every minute",
            "* * * *",
            "* * * * * *",
            "TZ=Europe/Madrid 0 9 * * *",
            " * * * * *",
            "@reboot",
        ] {
            assert!(!shape.is_match(bad), "{bad:?}");
        }
        let zone = regex::Regex::new(TIME_ZONE_PATTERN).unwrap();
        for good in [
            "UTC",
            "Europe/Madrid",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert!(zone.is_match(good), "{good:?}");
        }
        for bad in ["", "/etc/localtime", "Europe/../Madrid", "Europe Madrid"] {
            assert!(!zone.is_match(bad), "{bad:?}");
        }
    }
}
