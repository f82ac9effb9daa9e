//! Condition bookkeeping shared by every Tether status: one condition per type, with
//! `lastTransitionTime` moving only when the status really changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Status value of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl ConditionStatus {
    /// The value as written in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// A condition to record, before transition-time bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition<'a> {
    /// Condition type, e.g. `Ready`.
    pub type_: &'a str,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Human-readable message.
    pub message: String,
}

/// Sets `new` in `conditions`, replacing the condition of the same type. The transition time
/// is kept when the status did not change, so re-running a reconcile never moves it.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    new: NewCondition<'_>,
    observed_generation: Option<i64>,
    now: Time,
) {
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == new.type_ && c.status == new.status.as_str())
        .map_or(now, |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: new.type_.to_owned(),
        status: new.status.as_str().to_owned(),
        reason: new.reason.to_owned(),
        message: new.message,
        observed_generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Looks up a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: ConditionStatus, reason: &str) -> NewCondition<'_> {
        NewCondition {
            type_: "Ready",
            status,
            reason,
            message: format!("because {reason}"),
        }
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            ready(ConditionStatus::False, "Waiting"),
            Some(1),
            t(10),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(10));

        // Same status, new reason: time kept, reason and generation updated.
        set_condition(
            &mut conds,
            ready(ConditionStatus::False, "StillWaiting"),
            Some(2),
            t(20),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(10));
        assert_eq!(conds[0].reason, "StillWaiting");
        assert_eq!(conds[0].observed_generation, Some(2));

        // Status flips: time moves.
        set_condition(
            &mut conds,
            ready(ConditionStatus::True, "Up"),
            Some(2),
            t(30),
        );
        assert_eq!(conds[0].last_transition_time, t(30));
        assert!(is_true(&conds, "Ready"));
        assert!(!is_true(&conds, "Other"));
    }

    #[test]
    fn conditions_of_other_types_are_kept() {
        let mut conds = Vec::new();
        set_condition(&mut conds, ready(ConditionStatus::True, "Up"), None, t(1));
        set_condition(
            &mut conds,
            NewCondition {
                type_: "Recording",
                status: ConditionStatus::False,
                reason: "StoreUnreachable",
                message: "object store did not answer".into(),
            },
            None,
            t(2),
        );
        assert_eq!(conds.len(), 2);
        assert_eq!(
            find(&conds, "Recording").unwrap().reason,
            "StoreUnreachable"
        );
        assert!(is_true(&conds, "Ready"));
    }
}
