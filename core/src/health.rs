//! Active health checks: a check's possible results, and the rule that turns a run of them into
//! the server's verdict (HAProxy's `fall`/`rise`). The checks themselves are exchanges the core
//! originates (`engine::health`); the schedule and the verdict live in the process-wide ledger
//! ([`Shared`](crate::Shared)), so a server is checked once per interval for the whole process
//! and failed for every worker at once.

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// A response whose status `expect` accepts.
    Pass,
    /// A response with another status.
    Fail,
    /// No complete response within `timeout` (connect included).
    Timeout,
    /// The connect failed, or the backend closed, reset or answered something unparsable.
    Error,
}

impl CheckResult {
    /// Number of results.
    pub const COUNT: usize = 4;

    /// Every result, in index order (`result as usize`).
    pub const ALL: [CheckResult; CheckResult::COUNT] = [
        CheckResult::Pass,
        CheckResult::Fail,
        CheckResult::Timeout,
        CheckResult::Error,
    ];

    /// A label, e.g. for `upkeep_upstream_health_checks_total{result="..."}`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "fail",
            CheckResult::Timeout => "timeout",
            CheckResult::Error => "error",
        }
    }

    /// Whether the result counts toward `rise` (else toward `fall`).
    pub fn passed(self) -> bool {
        self == CheckResult::Pass
    }
}

/// A server's run of check results: consecutive passes and failures, and the verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streak {
    /// Passing checks in a row (0 after a failure).
    pub passes: u32,
    /// Failed checks in a row (0 after a pass).
    pub fails: u32,
    /// The checks hold the server out of rotation.
    pub failed: bool,
}

/// The streak after one more result: `fall` failures in a row fail a healthy server, `rise`
/// passes in a row bring a failed one back; a result that agrees with the verdict only extends
/// the run. Servers start healthy with an empty streak (nginx Plus without `mandatory`).
pub fn next_streak(s: Streak, result: CheckResult, fall: u32, rise: u32) -> Streak {
    if result.passed() {
        let passes = s.passes.saturating_add(1);
        Streak {
            passes,
            fails: 0,
            failed: s.failed && passes < rise,
        }
    } else {
        let fails = s.fails.saturating_add(1);
        Streak {
            passes: 0,
            fails,
            failed: s.failed || fails >= fall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CheckResult::*;
    use super::*;

    #[test]
    fn fall_and_rise_table() {
        // (results from a healthy start, fall, rise, verdict after each)
        let cases: &[(&[CheckResult], u32, u32, &[bool])] = &[
            (&[Fail, Fail, Fail], 3, 2, &[false, false, true]),
            (
                &[Fail, Pass, Fail, Fail],
                2,
                1,
                &[false, false, false, true],
            ),
            (&[Timeout], 1, 1, &[true]),
            (&[Error, Pass], 1, 1, &[true, false]),
            (
                &[Fail, Pass, Fail, Pass, Pass],
                1,
                2,
                &[true, true, true, true, false],
            ),
            (&[Pass, Pass], 3, 2, &[false, false]),
        ];
        for &(results, fall, rise, want) in cases {
            let mut s = Streak::default();
            let got: Vec<bool> = results
                .iter()
                .map(|&r| {
                    s = next_streak(s, r, fall, rise);
                    s.failed
                })
                .collect();
            assert_eq!(got, want, "{results:?} fall={fall} rise={rise}");
        }
    }

    #[test]
    fn labels() {
        let l: Vec<_> = CheckResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(l, ["pass", "fail", "timeout", "error"]);
        assert!(
            CheckResult::ALL
                .iter()
                .enumerate()
                .all(|(i, r)| *r as usize == i)
        );
    }
}
