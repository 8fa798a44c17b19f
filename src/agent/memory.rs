//! What a worker remembers between syncs, and the per-commit decisions made
//! from it. Pure: no I/O, no clock, so each of the design's invariants has
//! a unit test here.

use git2::Oid;

use crate::report::State;
use crate::verdict::{Failure, Reason, Retry};

/// How a commit's evaluation settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Accepted,
    /// Rejected for its content: evaluating it again gives the same.
    Rejected,
    /// Failed for a reason that may pass (an outage): evaluated again.
    Failed,
}

#[derive(Debug, Default)]
pub struct Memory {
    evaluated: Option<(Oid, Settled)>,
    /// The commit whose evaluation was announced (`pending`).
    announced: Option<Oid>,
    /// The last final state reported, per commit: one report per state.
    reported: Option<(Oid, State)>,
    /// The last failure counted, so a verdict repeated on the same commit
    /// (an untrusted head seen at every poll) counts once.
    counted: Option<(Oid, Reason)>,
    /// The commit a suspension holds back, once it was said so: it is
    /// announced again when it is evaluated at last.
    held: Option<Oid>,
}

/// What to do with the branch head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Evaluate it: gate, plan every target, apply. `announce`: say
    /// `pending` first (once per commit).
    Evaluate {
        announce: bool,
    },
    /// Settled already: check the applied revisions for drift.
    CheckDrift,
    Idle,
}

/// What to do after an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conclusion {
    /// Report this final state to GitHub (and the revision history).
    pub report: Option<State>,
    /// Count a failure (`consecutive_failures`).
    pub count_failure: bool,
    pub retry: Retry,
}

impl Memory {
    /// Decides about `head`, already fetched and trusted.
    pub fn next(&self, head: Oid, drift_due: bool) -> Next {
        match self.evaluated {
            Some((c, Settled::Accepted | Settled::Rejected)) if c == head => {
                if drift_due {
                    Next::CheckDrift
                } else {
                    Next::Idle
                }
            }
            _ => Next::Evaluate {
                announce: self.announced != Some(head) || self.held == Some(head),
            },
        }
    }

    /// Records that `head`'s evaluation is announced; false when it was
    /// already (a retry, or an untrusted head seen again).
    pub fn announce(&mut self, head: Oid) -> bool {
        let first = self.announced != Some(head) || self.held == Some(head);
        self.announced = Some(head);
        self.held = None;
        first
    }

    /// Records that a suspension holds `head` back; true the first time,
    /// when there is something to hold (a head not yet settled), so people
    /// are told once per commit.
    pub fn hold(&mut self, head: Oid) -> bool {
        if self.held == Some(head) || !matches!(self.next(head, false), Next::Evaluate { .. }) {
            return false;
        }
        self.announced = Some(head);
        self.held = Some(head);
        true
    }

    /// True when the last evaluation of `head` accepted it.
    pub fn accepted(&self, head: Oid) -> bool {
        self.evaluated == Some((head, Settled::Accepted))
    }

    /// Records how the evaluation of `commit` ended.
    pub fn conclude(&mut self, commit: Oid, result: Result<(), &Failure>) -> Conclusion {
        let (state, settled, retry, reason) = match result {
            Ok(()) => (State::Success, Settled::Accepted, Retry::WaitForGit, None),
            Err(f) => {
                let p = f.policy();
                let settled = match p.retry {
                    Retry::WaitForGit => Settled::Rejected,
                    Retry::Backoff => Settled::Failed,
                };
                (p.state, settled, p.retry, Some(f.reason))
            }
        };
        // An untrusted head is checked again at every poll: listing its
        // key in the allowed signers file must take effect without a push.
        if reason != Some(Reason::Untrusted) {
            self.evaluated = Some((commit, settled));
        }
        let count_failure = match reason {
            None => {
                self.counted = None;
                false
            }
            Some(r) => {
                let repeat = r == Reason::Untrusted && self.counted == Some((commit, r));
                self.counted = Some((commit, r));
                !repeat
            }
        };
        // Only an announced commit gets a final word, and each state once.
        let report = (self.announced == Some(commit) && self.reported != Some((commit, state)))
            .then(|| {
                self.reported = Some((commit, state));
                state
            });
        Conclusion {
            report,
            count_failure,
            retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn failure(reason: Reason) -> Failure {
        Failure::new(reason, "no")
    }

    /// Runs one evaluation the way the worker does.
    fn evaluate(m: &mut Memory, head: Oid, result: Result<(), &Failure>) -> Conclusion {
        if let Next::Evaluate { announce: true } = m.next(head, false) {
            m.announce(head);
        }
        m.conclude(head, result)
    }

    #[test]
    fn pending_is_announced_once_per_commit() {
        let mut m = Memory::default();
        assert_eq!(m.next(oid(1), false), Next::Evaluate { announce: true });
        m.announce(oid(1));
        m.conclude(oid(1), Err(&failure(Reason::ClusterUnavailable)));
        // The retry evaluates again, without a second `pending`.
        assert_eq!(m.next(oid(1), false), Next::Evaluate { announce: false });
        assert_eq!(m.next(oid(2), false), Next::Evaluate { announce: true });
    }

    #[test]
    fn a_held_commit_is_said_so_once_and_announced_again_when_evaluated() {
        let mut m = Memory::default();
        evaluate(&mut m, oid(1), Ok(()));
        // Suspended: the settled head holds nothing; a new one, once.
        assert!(!m.hold(oid(1)));
        assert!(m.hold(oid(2)));
        assert!(!m.hold(oid(2)));
        // Resumed: evaluated with a fresh `pending`, then one verdict.
        assert_eq!(m.next(oid(2), false), Next::Evaluate { announce: true });
        assert!(m.announce(oid(2)));
        assert_eq!(m.conclude(oid(2), Ok(())).report, Some(State::Success));
        assert_eq!(m.next(oid(2), false), Next::Idle);
    }

    #[test]
    fn each_commit_gets_one_final_status_per_state() {
        let mut m = Memory::default();
        let outage = failure(Reason::ClusterUnavailable);
        assert_eq!(
            evaluate(&mut m, oid(1), Err(&outage)).report,
            Some(State::Error)
        );
        // The same outage again: nothing new to say.
        assert_eq!(evaluate(&mut m, oid(1), Err(&outage)).report, None);
        // It recovers: the final word changes once.
        assert_eq!(
            evaluate(&mut m, oid(1), Ok(())).report,
            Some(State::Success)
        );
        assert_eq!(m.next(oid(1), false), Next::Idle);
    }

    #[test]
    fn a_rejected_commit_waits_for_git() {
        for reason in [Reason::Invalid, Reason::Refused] {
            let mut m = Memory::default();
            let c = evaluate(&mut m, oid(1), Err(&failure(reason)));
            assert_eq!(c.retry, Retry::WaitForGit);
            assert!(c.count_failure);
            assert_eq!(c.report, Some(State::Failure));
            assert_eq!(m.next(oid(1), false), Next::Idle, "{reason:?}");
            // Drift of the last good revision is still checked meanwhile.
            assert_eq!(m.next(oid(1), true), Next::CheckDrift, "{reason:?}");
            assert_eq!(m.next(oid(2), true), Next::Evaluate { announce: true });
        }
    }

    #[test]
    fn an_outage_is_retried_and_counted_each_time() {
        let mut m = Memory::default();
        for _ in 0..3 {
            let c = evaluate(&mut m, oid(1), Err(&failure(Reason::AwsUnavailable)));
            assert_eq!(c.retry, Retry::Backoff);
            assert!(c.count_failure);
        }
        assert!(!m.accepted(oid(1)));
    }

    #[test]
    fn an_untrusted_head_is_checked_again_but_counted_and_reported_once() {
        let mut m = Memory::default();
        let untrusted = failure(Reason::Untrusted);
        assert!(m.announce(oid(1)));
        let first = m.conclude(oid(1), Err(&untrusted));
        assert_eq!(
            (first.report, first.count_failure),
            (Some(State::Failure), true)
        );
        assert!(!m.announce(oid(1)));
        let again = m.conclude(oid(1), Err(&untrusted));
        assert_eq!((again.report, again.count_failure), (None, false));
        // Its key listed now: evaluated like any commit, no second pending.
        assert_eq!(m.next(oid(1), false), Next::Evaluate { announce: false });
        assert_eq!(m.conclude(oid(1), Ok(())).report, Some(State::Success));
    }

    #[test]
    fn drift_checks_report_nothing_to_github() {
        let mut m = Memory::default();
        evaluate(&mut m, oid(1), Ok(()));
        // Drift is not an evaluation: the worker never concludes one, and
        // a commit not announced gets no final status even if concluded.
        assert_eq!(m.next(oid(1), true), Next::CheckDrift);
        let mut fresh = Memory::default();
        assert_eq!(fresh.conclude(oid(1), Ok(())).report, None);
    }

    #[test]
    fn a_commit_whose_gate_failed_is_not_accepted() {
        let mut m = Memory::default();
        evaluate(&mut m, oid(1), Err(&failure(Reason::Invalid)));
        assert!(!m.accepted(oid(1)));
        evaluate(&mut m, oid(2), Ok(()));
        assert!(m.accepted(oid(2)));
    }
}
