//! Admin policies: which plugin, user, team, operation class and time window
//! they match, and how deny rules and allow exceptions combine.
//!
//! Evaluation is pure (the caller passes the time), so the time-window logic
//! is unit-tested with fixed instants.

use serde::{Deserialize, Serialize};

use super::OpClass;

/// Whether a policy blocks matching calls or exempts them from blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Matching calls are denied (unless an `Allow` policy matches too).
    Deny,
    /// An exception: a matching call is not blocked by any `Deny` policy.
    Allow,
}

impl Effect {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Deny => "deny",
            Effect::Allow => "allow",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Effect> {
        match s {
            "deny" => Some(Effect::Deny),
            "allow" => Some(Effect::Allow),
            _ => None,
        }
    }
}

/// One admin policy. Every `Some`/non-wildcard selector must match for the
/// policy to apply. Times are UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// Unique name, cited in denials.
    pub name: String,
    /// Deny or allow-exception.
    pub effect: Effect,
    /// Glob over plugin ids: `*` any run of characters, `?` one character.
    pub plugin_pattern: String,
    /// Only calls acting as this user.
    pub user: Option<String>,
    /// Only calls whose acting user is a member of this team.
    pub team: Option<String>,
    /// Only this class of operation.
    pub operation_class: Option<OpClass>,
    /// Only at or after this instant (ms since the epoch).
    pub not_before_ms: Option<i64>,
    /// Only before this instant (ms since the epoch).
    pub not_after_ms: Option<i64>,
    /// Only on these weekdays: bit 0 = Monday .. bit 6 = Sunday.
    pub weekdays: Option<u8>,
    /// Only from this hour (0..=23) ...
    pub hour_start: Option<u8>,
    /// ... until before this hour (1..=24); start > end wraps past midnight.
    pub hour_end: Option<u8>,
    /// Why the rule exists; quoted in the denial.
    pub reason: String,
}

/// What a policy is matched against.
#[derive(Debug, Clone, Copy)]
pub struct PolicySubject<'a> {
    /// The calling plugin's id.
    pub plugin_id: &'a str,
    /// The acting user.
    pub user: &'a str,
    /// The acting user's teams.
    pub teams: &'a [String],
    /// The class of the operation.
    pub class: OpClass,
    /// Now, ms since the epoch (UTC).
    pub now_ms: i64,
}

impl Policy {
    /// Whether this policy applies to `s`.
    pub fn matches(&self, s: &PolicySubject<'_>) -> bool {
        glob_match(&self.plugin_pattern, s.plugin_id)
            && self.user.as_deref().is_none_or(|u| u == s.user)
            && self
                .team
                .as_deref()
                .is_none_or(|t| s.teams.iter().any(|m| m == t))
            && self.operation_class.is_none_or(|c| c == s.class)
            && self.not_before_ms.is_none_or(|t| s.now_ms >= t)
            && self.not_after_ms.is_none_or(|t| s.now_ms < t)
            && self
                .weekdays
                .is_none_or(|mask| mask & (1 << weekday(s.now_ms)) != 0)
            && self.hours_match(s.now_ms)
    }

    fn hours_match(&self, now_ms: i64) -> bool {
        let h = hour(now_ms);
        match (self.hour_start, self.hour_end) {
            (None, None) => true,
            (Some(a), None) => h >= a,
            (None, Some(b)) => h < b,
            (Some(a), Some(b)) if a <= b => h >= a && h < b,
            (Some(a), Some(b)) => h >= a || h < b,
        }
    }

    /// The denial text citing this policy.
    pub fn denial(&self) -> String {
        if self.reason.is_empty() {
            format!("blocked by admin policy '{}' (#{})", self.name, self.id)
        } else {
            format!(
                "blocked by admin policy '{}' (#{}): {}",
                self.name, self.id, self.reason
            )
        }
    }
}

/// Evaluates `policies` for `s`: the first matching deny policy blocks the
/// call unless some allow policy matches too. Returns the blocking policy.
pub fn blocking_policy<'p>(policies: &'p [Policy], s: &PolicySubject<'_>) -> Option<&'p Policy> {
    let deny = policies
        .iter()
        .find(|p| p.effect == Effect::Deny && p.matches(s))?;
    let exempt = policies
        .iter()
        .any(|p| p.effect == Effect::Allow && p.matches(s));
    if exempt { None } else { Some(deny) }
}

const MS_PER_DAY: i64 = 86_400_000;

/// Weekday of `ms` (UTC): 0 = Monday .. 6 = Sunday. 1970-01-01 was a Thursday.
pub fn weekday(ms: i64) -> u8 {
    let days = ms.div_euclid(MS_PER_DAY);
    // Range 0..7 by rem_euclid, so the cast cannot truncate.
    (days + 3).rem_euclid(7) as u8
}

/// Hour of the day of `ms` (UTC), 0..=23.
pub fn hour(ms: i64) -> u8 {
    (ms.rem_euclid(MS_PER_DAY) / 3_600_000) as u8
}

/// Glob match with `*` (any run, including empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-30 is a Monday. 00:00 UTC that day:
    const MON: i64 = 1_795_996_800_000;
    const HOUR: i64 = 3_600_000;

    fn base() -> Policy {
        Policy {
            id: 7,
            name: "no-example".into(),
            effect: Effect::Deny,
            plugin_pattern: "org.example.*".into(),
            user: None,
            team: None,
            operation_class: None,
            not_before_ms: None,
            not_after_ms: None,
            weekdays: None,
            hour_start: None,
            hour_end: None,
            reason: "freeze".into(),
        }
    }

    fn subject(plugin: &str, now_ms: i64) -> PolicySubject<'_> {
        PolicySubject {
            plugin_id: plugin,
            user: "alice",
            teams: &[],
            class: OpClass::Write,
            now_ms,
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(weekday(0), 3); // Thursday
        assert_eq!(weekday(MON), 0);
        assert_eq!(weekday(MON + 6 * 24 * HOUR), 6);
        assert_eq!(weekday(MON + 7 * 24 * HOUR), 0);
        assert_eq!(hour(MON + 13 * HOUR + 59 * 60_000), 13);
        assert_eq!(weekday(-1), 2); // 1969-12-31 was a Wednesday
    }

    #[test]
    fn globs() {
        assert!(glob_match("org.example.*", "org.example.threshold"));
        assert!(!glob_match("org.example.*", "org.examples.x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("org.*.t?o", "org.a.b.two"));
        assert!(!glob_match("org.*.t?o", "org.a.b.tooo"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn absolute_window() {
        let mut p = base();
        p.not_before_ms = Some(MON);
        p.not_after_ms = Some(MON + 24 * HOUR);
        assert!(p.matches(&subject("org.example.t", MON)));
        assert!(p.matches(&subject("org.example.t", MON + 23 * HOUR)));
        assert!(!p.matches(&subject("org.example.t", MON + 24 * HOUR)));
        assert!(!p.matches(&subject("org.example.t", MON - 1)));
        assert!(!p.matches(&subject("org.other.t", MON + HOUR)));
    }

    #[test]
    fn recurring_window() {
        let mut p = base();
        p.weekdays = Some(0b001_1111); // Monday..Friday
        p.hour_start = Some(22);
        p.hour_end = Some(6); // overnight
        assert!(p.matches(&subject("org.example.t", MON + 23 * HOUR)));
        assert!(p.matches(&subject("org.example.t", MON + 2 * HOUR)));
        assert!(!p.matches(&subject("org.example.t", MON + 12 * HOUR)));
        // Saturday 23:00 is outside the weekdays.
        assert!(!p.matches(&subject("org.example.t", MON + 5 * 24 * HOUR + 23 * HOUR)));
        p.hour_start = Some(9);
        p.hour_end = Some(17);
        assert!(p.matches(&subject("org.example.t", MON + 9 * HOUR)));
        assert!(!p.matches(&subject("org.example.t", MON + 17 * HOUR)));
    }

    #[test]
    fn selectors_and_exceptions() {
        let deny = base();
        let mut allow = base();
        allow.id = 8;
        allow.name = "alice-may".into();
        allow.effect = Effect::Allow;
        allow.user = Some("alice".into());
        allow.operation_class = Some(OpClass::Read);
        let policies = vec![deny.clone(), allow];
        let mut s = subject("org.example.t", MON);
        assert_eq!(blocking_policy(&policies, &s).map(|p| p.id), Some(7));
        s.class = OpClass::Read;
        assert_eq!(blocking_policy(&policies, &s), None);
        s.user = "bob";
        assert_eq!(blocking_policy(&policies, &s).map(|p| p.id), Some(7));
        let mut team_rule = base();
        team_rule.team = Some("lab".into());
        let teams = vec!["lab".to_string()];
        s.teams = &teams;
        assert!(team_rule.matches(&s));
        s.teams = &[];
        assert!(!team_rule.matches(&s));
        assert!(deny.denial().contains("'no-example' (#7): freeze"));
    }
}
