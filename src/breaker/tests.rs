use super::*;
use std::thread;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const NS: Duration = Duration::from_nanos(1);

fn policy(edit: impl FnOnce(&mut BreakerPolicy)) -> Arc<BreakerPolicy> {
    let mut policy = BreakerPolicy::default();
    edit(&mut policy);
    Arc::new(policy)
}

fn fail_times(breaker: &Breaker, n: u32, now: Instant) -> Option<Transition> {
    let mut last = None;
    for _ in 0..n {
        last = breaker.record_failure(None, now);
    }
    last
}

fn probe(breaker: &Breaker, now: Instant) -> ProbePermit {
    match breaker.admit(now) {
        (Admission::Probe(permit), _) => permit,
        other => panic!("expected a probe, got {other:?}"),
    }
}

fn opened() -> Option<Transition> {
    Some(Transition::new(State::Closed, State::Open))
}

/// Trips a breaker with the default policy (5 consecutive failures).
fn tripped(policy: Arc<BreakerPolicy>, now: Instant) -> Breaker {
    let breaker = Breaker::new(policy);
    let limit = breaker.policy().consecutive_failures;
    assert_eq!(fail_times(&breaker, limit, now), opened());
    breaker
}

/// opens_after_consecutive_failures: the Nth failure in a row opens the
/// breaker, the (N-1)th does not.
#[test]
fn opens_after_consecutive_failures() {
    let t0 = Instant::now();
    let breaker = Breaker::new(policy(|p| p.consecutive_failures = 3));
    assert_eq!(fail_times(&breaker, 2, t0), None);
    assert_eq!(breaker.state(t0), State::Closed);
    assert!(breaker.would_admit(t0));
    assert_eq!(breaker.record_failure(None, t0), opened());
    assert_eq!(breaker.state(t0), State::Open);
    assert!(!breaker.would_admit(t0));
    assert!(breaker.admit(t0).0.is_rejected());
}

/// success_resets_consecutive_failures: a success between failures starts
/// the count again.
#[test]
fn success_resets_consecutive_failures() {
    let t0 = Instant::now();
    let breaker = Breaker::new(policy(|p| p.consecutive_failures = 3));
    fail_times(&breaker, 2, t0);
    assert_eq!(breaker.record_success(None, t0), None);
    assert_eq!(fail_times(&breaker, 2, t0), None);
    assert_eq!(breaker.state(t0), State::Closed);
    assert_eq!(breaker.record_failure(None, t0), opened());
}

/// failure_rate_opens_after_min_requests: the rate trigger waits for
/// min_requests in the window and trips when failures reach the ratio.
#[test]
fn failure_rate_opens_after_min_requests() {
    let t0 = Instant::now();
    let breaker = Breaker::new(policy(|p| {
        p.consecutive_failures = 0;
        p.failure_rate = Some(0.5);
        p.min_requests = 10;
    }));
    // 9 requests, 5 of them failures: over the ratio but under the volume.
    for _ in 0..4 {
        assert_eq!(breaker.record_success(None, t0), None);
        assert_eq!(breaker.record_failure(None, t0), None);
    }
    assert_eq!(breaker.record_failure(None, t0), None);
    assert_eq!(breaker.state(t0), State::Closed);
    // 10th request, 6/10 failed.
    assert_eq!(breaker.record_failure(None, t0), opened());
}

/// failure_rate_below_threshold_stays_closed: enough volume but a failure
/// ratio under the threshold keeps the breaker closed; reaching it
/// exactly opens it.
#[test]
fn failure_rate_below_threshold_stays_closed() {
    let t0 = Instant::now();
    let breaker = Breaker::new(policy(|p| {
        p.consecutive_failures = 0;
        p.failure_rate = Some(0.5);
        p.min_requests = 10;
    }));
    for _ in 0..6 {
        breaker.record_success(None, t0);
    }
    assert_eq!(fail_times(&breaker, 4, t0), None, "4/10 is under 0.5");
    assert_eq!(fail_times(&breaker, 1, t0), None, "5/11 is under 0.5");
    assert_eq!(fail_times(&breaker, 1, t0), opened(), "6/12 reaches 0.5");
}

/// failure_rate_forgets_failures_outside_window: failures that slid out
/// of the window count neither toward the volume nor the ratio.
#[test]
fn failure_rate_forgets_failures_outside_window() {
    let t0 = Instant::now();
    let breaker = Breaker::new(policy(|p| {
        p.consecutive_failures = 0;
        p.failure_rate = Some(0.5);
        p.min_requests = 10;
        p.window = Duration::from_secs(10);
    }));
    assert_eq!(fail_times(&breaker, 9, t0), None);
    let later = t0 + Duration::from_secs(11);
    // With the old failures still counted this would be 10/10.
    assert_eq!(breaker.record_failure(None, later), None);
    for _ in 0..5 {
        breaker.record_success(None, later);
    }
    assert_eq!(fail_times(&breaker, 3, later), None, "4/9 is under volume");
    assert_eq!(fail_times(&breaker, 1, later), opened(), "5/10 trips");
}

/// open_lasts_open_for: the breaker refuses until exactly open_for has
/// passed, then the first admit turns it half-open with a probe.
#[test]
fn open_lasts_open_for() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.open_for = 10 * SEC), t0);
    let end = t0 + 10 * SEC;
    assert_eq!(breaker.state(end - NS), State::Open);
    assert!(!breaker.would_admit(end - NS));
    assert!(breaker.admit(end - NS).0.is_rejected());
    assert_eq!(breaker.state(end), State::HalfOpen);
    assert!(breaker.would_admit(end));
    let (admission, transition) = breaker.admit(end);
    assert!(matches!(admission, Admission::Probe(_)));
    assert_eq!(
        transition,
        Some(Transition::new(State::Open, State::HalfOpen))
    );
}

/// open_for_doubles_up_to_cap: each probe failure without an intervening
/// close doubles the open period until max_open_for.
#[test]
fn open_for_doubles_up_to_cap() {
    let t0 = Instant::now();
    let breaker = tripped(
        policy(|p| {
            p.open_for = SEC;
            p.max_open_for = 5 * SEC;
        }),
        t0,
    );
    let mut now = t0;
    for expected in [1, 2, 4, 5, 5] {
        let period = expected * SEC;
        assert!(!breaker.would_admit(now + period - NS), "open {expected}s");
        now += period;
        let permit = probe(&breaker, now);
        assert_eq!(
            breaker.record_failure(Some(permit), now),
            Some(Transition::new(State::HalfOpen, State::Open))
        );
    }
}

/// closing_resets_backoff: after the breaker closes, the next trip opens
/// for the base open_for again.
#[test]
fn closing_resets_backoff() {
    let t0 = Instant::now();
    let breaker = tripped(
        policy(|p| {
            p.open_for = SEC;
            p.half_open_probes = 1;
        }),
        t0,
    );
    let t1 = t0 + SEC;
    breaker.record_failure(Some(probe(&breaker, t1)), t1);
    let t2 = t1 + 2 * SEC;
    assert_eq!(
        breaker.record_success(Some(probe(&breaker, t2)), t2),
        Some(Transition::new(State::HalfOpen, State::Closed))
    );
    assert_eq!(fail_times(&breaker, 5, t2), opened());
    assert!(!breaker.would_admit(t2 + SEC - NS));
    assert!(breaker.would_admit(t2 + SEC));
}

/// half_open_limits_concurrent_probes: exactly half_open_probes probes are
/// admitted at once; the next admit is rejected.
#[test]
fn half_open_limits_concurrent_probes() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.half_open_probes = 3), t0);
    let t1 = t0 + BreakerPolicy::default().open_for;
    let permits: Vec<_> = (0..3).map(|_| probe(&breaker, t1)).collect();
    assert!(!breaker.would_admit(t1));
    assert!(breaker.admit(t1).0.is_rejected());
    assert_eq!(breaker.state(t1), State::HalfOpen);
    assert_eq!(permits.len(), 3);
}

/// half_open_closes_after_probe_successes: half_open_probes successes
/// close the breaker, one fewer does not.
#[test]
fn half_open_closes_after_probe_successes() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.half_open_probes = 3), t0);
    let t1 = t0 + BreakerPolicy::default().open_for;
    let mut permits: Vec<_> = (0..3).map(|_| probe(&breaker, t1)).collect();
    let last = permits.pop();
    for permit in permits {
        assert_eq!(breaker.record_success(Some(permit), t1), None);
    }
    assert_eq!(breaker.state(t1), State::HalfOpen);
    assert_eq!(
        breaker.record_success(last, t1),
        Some(Transition::new(State::HalfOpen, State::Closed))
    );
    assert_eq!(breaker.state(t1), State::Closed);
    assert!(matches!(breaker.admit(t1).0, Admission::Allowed));
}

/// half_open_reopens_on_one_probe_failure: one failed probe reopens the
/// breaker, and the other outstanding probes can no longer close it.
#[test]
fn half_open_reopens_on_one_probe_failure() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.half_open_probes = 2), t0);
    let t1 = t0 + BreakerPolicy::default().open_for;
    let first = probe(&breaker, t1);
    let second = probe(&breaker, t1);
    assert_eq!(
        breaker.record_failure(Some(first), t1),
        Some(Transition::new(State::HalfOpen, State::Open))
    );
    assert_eq!(breaker.record_success(Some(second), t1), None);
    assert_eq!(breaker.state(t1), State::Open);
}

/// dropped_permit_frees_probe_slot: dropping an unreported permit frees
/// its slot and counts neither as success nor failure.
#[test]
fn dropped_permit_frees_probe_slot() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.half_open_probes = 2), t0);
    let t1 = t0 + BreakerPolicy::default().open_for;
    let first = probe(&breaker, t1);
    let second = probe(&breaker, t1);
    assert!(!breaker.would_admit(t1));
    drop(first);
    assert!(breaker.would_admit(t1));
    let third = probe(&breaker, t1);
    assert_eq!(breaker.state(t1), State::HalfOpen, "drop is no failure");
    assert_eq!(breaker.record_success(Some(second), t1), None);
    assert_eq!(
        breaker.record_success(Some(third), t1),
        Some(Transition::new(State::HalfOpen, State::Closed)),
        "drop was no success either: two reported successes were needed"
    );
}

/// probe_timeout_frees_stuck_slot: a probe older than probe_timeout loses
/// its slot and its late report is ignored.
#[test]
fn probe_timeout_frees_stuck_slot() {
    let t0 = Instant::now();
    let breaker = tripped(
        policy(|p| {
            p.half_open_probes = 1;
            p.probe_timeout = 5 * SEC;
        }),
        t0,
    );
    let t1 = t0 + BreakerPolicy::default().open_for;
    let stuck = probe(&breaker, t1);
    assert!(!breaker.would_admit(t1 + 5 * SEC - NS));
    assert!(breaker.admit(t1 + 5 * SEC - NS).0.is_rejected());
    let t2 = t1 + 5 * SEC;
    assert!(breaker.would_admit(t2));
    let fresh = probe(&breaker, t2);
    assert_eq!(breaker.record_failure(Some(stuck), t2), None);
    assert_eq!(breaker.state(t2), State::HalfOpen);
    assert_eq!(
        breaker.record_success(Some(fresh), t2),
        Some(Transition::new(State::HalfOpen, State::Closed))
    );
}

/// results_without_permit_ignored_when_not_closed: stragglers admitted
/// before the trip neither extend nor end the open or half-open state.
#[test]
fn results_without_permit_ignored_when_not_closed() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.half_open_probes = 1), t0);
    let t1 = t0 + BreakerPolicy::default().open_for;
    assert_eq!(breaker.record_failure(None, t1 - NS), None);
    assert_eq!(breaker.record_success(None, t1 - NS), None);
    assert!(breaker.would_admit(t1), "failure did not extend the period");
    let permit = probe(&breaker, t1);
    assert_eq!(breaker.record_success(None, t1), None);
    assert_eq!(breaker.record_failure(None, t1), None);
    assert_eq!(breaker.state(t1), State::HalfOpen);
    assert_eq!(breaker.probes_in_flight(), 1);
    drop(permit);
}

/// foreign_permit_counts_as_plain_result: a permit handed to the wrong
/// breaker frees its own slot and does not vote on the other breaker.
#[test]
fn foreign_permit_counts_as_plain_result() {
    let t0 = Instant::now();
    let half_open = tripped(policy(|p| p.half_open_probes = 1), t0);
    let other = Breaker::new(policy(|_| {}));
    let t1 = t0 + BreakerPolicy::default().open_for;
    let permit = probe(&half_open, t1);
    assert_eq!(other.record_success(Some(permit), t1), None);
    assert_eq!(half_open.state(t1), State::HalfOpen);
    assert_eq!(half_open.probes_in_flight(), 0);
    assert_eq!(other.state(t1), State::Closed);
}

/// instants_before_epoch_order_correctly: an Instant taken before the
/// breaker (and the process epoch) existed still times the open period.
#[test]
fn instants_before_epoch_order_correctly() {
    let Some(early) = Instant::now().checked_sub(Duration::from_secs(3600)) else {
        return; // Host booted less than an hour ago; nothing to test.
    };
    let breaker = tripped(policy(|p| p.open_for = 10 * SEC), early);
    assert!(!breaker.would_admit(early + 10 * SEC - NS));
    assert!(breaker.would_admit(early + 10 * SEC));
}

/// ejection_cap_spares_later_trips: with 3 backends at 50% only one is
/// ejected; the second to trip stays selectable and is admitted as
/// Overridden.
#[test]
fn ejection_cap_spares_later_trips() {
    let t0 = Instant::now();
    let group = GroupBreakers::new(["a", "b", "c"], policy(|_| {}));
    assert_eq!(group.max_ejected(), 1);
    let [a, b, c] = [0, 1, 2].map(|i| group.get(i).cloned());
    let (Some(a), Some(b), Some(c)) = (a, b, c) else {
        panic!("group of three");
    };
    // b trips first, then a: the earlier trip is the one ejected, not
    // the lower index.
    assert_eq!(fail_times(&b, 5, t0), opened());
    assert_eq!(fail_times(&a, 5, t0 + MS), opened());
    let now = t0 + 2 * MS;
    assert!(group.allows(0, now), "a tripped second: spared by the cap");
    assert!(!group.allows(1, now), "b tripped first: ejected");
    assert!(group.allows(2, now));
    assert_eq!(group.ejected(now), 1);
    assert!(matches!(group.admit(0, now).0, Admission::Overridden));
    assert!(group.admit(1, now).0.is_rejected());
    assert!(matches!(group.admit(2, now).0, Admission::Allowed));
    // Once b's period ends it may probe, and a (still open) takes the
    // single ejection.
    let later = t0 + BreakerPolicy::default().open_for;
    assert!(group.allows(1, later));
    assert!(!group.allows(0, later));
    assert_eq!(c.state(later), State::Closed);
    assert_eq!(group.index_of("b"), Some(1));
    assert!(group.get_by_key("b").is_some_and(|found| found.same_as(&b)));
}

/// ejection_cap_rounds_down: the cap is floor(len * percent / 100), so a
/// single backend at 50% is never ejected, at 100% it is, and 0% never
/// ejects anything.
#[test]
fn ejection_cap_rounds_down() {
    let t0 = Instant::now();
    for (percent, allowed) in [(50, true), (100, false), (0, true)] {
        let group = GroupBreakers::new(["only"], policy(|p| p.max_ejection_percent = percent));
        if let Some(breaker) = group.get(0) {
            fail_times(breaker, 5, t0);
        }
        assert_eq!(group.allows(0, t0), allowed, "{percent}%");
        assert_eq!(group.ejected(t0), usize::from(!allowed), "{percent}%");
    }
    assert!(GroupBreakers::<&str>::new([], policy(|_| {})).allows(0, t0));
}

/// set_policy_keeps_state: a reload keeps the open state and its deadline
/// and applies the new thresholds from the next result.
#[test]
fn set_policy_keeps_state() {
    let t0 = Instant::now();
    let breaker = tripped(policy(|p| p.half_open_probes = 1), t0);
    breaker.set_policy(policy(|p| {
        p.consecutive_failures = 2;
        p.half_open_probes = 1;
        p.open_for = 60 * SEC;
    }));
    let t1 = t0 + BreakerPolicy::default().open_for;
    assert_eq!(breaker.state(t1 - NS), State::Open);
    assert_eq!(breaker.state(t1), State::HalfOpen, "old deadline kept");
    breaker.record_success(Some(probe(&breaker, t1)), t1);
    assert_eq!(breaker.record_failure(None, t1), None);
    assert_eq!(breaker.record_failure(None, t1), opened());
    assert!(!breaker.would_admit(t1 + 60 * SEC - NS), "new open_for");
}

/// rebuild_reuses_breakers_by_key: a group rebuilt after a reload keeps
/// the breakers of backends that stay and starts new ones closed.
#[test]
fn rebuild_reuses_breakers_by_key() {
    let t0 = Instant::now();
    let old = GroupBreakers::new(["a".to_string(), "b".to_string()], policy(|_| {}));
    if let Some(b) = old.get_by_key("b") {
        fail_times(b, 5, t0);
    }
    let new = old.rebuild(
        ["b".to_string(), "c".to_string()],
        policy(|p| p.max_ejection_percent = 100),
    );
    assert_eq!(new.len(), 2);
    assert_eq!(new.max_ejected(), 2);
    assert_eq!(new.get(0).map(|b| b.state(t0)), Some(State::Open));
    assert_eq!(new.get(1).map(|c| c.state(t0)), Some(State::Closed));
    assert!(new
        .get(0)
        .zip(old.get(1))
        .is_some_and(|(x, y)| x.same_as(y)));
    assert_eq!(
        new.get(0).map(|b| b.policy().max_ejection_percent),
        Some(100)
    );
    let keys: Vec<_> = new.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);
}

/// concurrent_recording_stays_consistent: threads admitting and reporting
/// at once (with out-of-order clocks) neither panic nor leak probe slots,
/// every transition is reported exactly once so they chain from Closed to
/// the final state, and the breaker still recovers afterwards.
#[test]
fn concurrent_recording_stays_consistent() {
    let t0 = Instant::now();
    let breaker = Breaker::new(policy(|p| {
        p.consecutive_failures = 3;
        p.failure_rate = Some(0.5);
        p.min_requests = 5;
        p.open_for = MS;
        p.max_open_for = 4 * MS;
        p.half_open_probes = 2;
    }));
    let transitions: Vec<Transition> = thread::scope(|scope| {
        let workers: Vec<_> = (0..4u64)
            .map(|worker| {
                let breaker = breaker.clone();
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    // xorshift: periodic outcome patterns lock into
                    // phase with the open periods and never close.
                    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ worker;
                    for step in 0..5_000u64 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let now = t0 + Duration::from_micros(step * 100 + worker);
                        let (admission, opened) = breaker.admit(now);
                        seen.extend(opened);
                        let permit = admission.into_permit();
                        seen.extend(match rng % 10 {
                            0 => {
                                drop(permit);
                                None
                            }
                            1..=3 => breaker.record_failure(permit, now),
                            _ => breaker.record_success(permit, now),
                        });
                        assert!(breaker.probes_in_flight() <= 2);
                    }
                    seen
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    assert_eq!(breaker.probes_in_flight(), 0, "every permit was released");
    let states = [State::Closed, State::Open, State::HalfOpen];
    let net = |state| {
        let into = transitions.iter().filter(|t| t.to == state).count();
        let out_of = transitions.iter().filter(|t| t.from == state).count();
        into as i64 - out_of as i64
    };
    let last = state_of(breaker.shared.word.load(Ordering::Acquire));
    for state in states {
        let expected = i64::from(state == last) - i64::from(state == State::Closed);
        assert_eq!(net(state), expected, "{state} entries vs exits");
    }
    for (from, to) in [(0, 1), (1, 2), (2, 1), (2, 0)] {
        let edge = Transition::new(states[from], states[to]);
        assert!(transitions.contains(&edge), "{edge:?} never happened");
    }
    let end = t0 + Duration::from_secs(3600);
    while breaker.state(end) == State::HalfOpen {
        breaker.record_success(Some(probe(&breaker, end)), end);
    }
    assert_eq!(breaker.state(end), State::Closed);
}

/// policy_validation_reports_bad_fields: validate names the first field
/// the breaker would have to clamp.
#[test]
fn policy_validation_reports_bad_fields() {
    assert_eq!(BreakerPolicy::default().validate(), Ok(()));
    let field = |edit: fn(&mut BreakerPolicy)| {
        let mut policy = BreakerPolicy::default();
        edit(&mut policy);
        policy.validate().err().map(|e| e.field)
    };
    assert_eq!(field(|p| p.failure_rate = Some(1.5)), Some("failure_rate"));
    assert_eq!(
        field(|p| p.failure_rate = Some(f64::NAN)),
        Some("failure_rate")
    );
    assert_eq!(
        field(|p| {
            p.failure_rate = Some(0.5);
            p.window = Duration::ZERO;
        }),
        Some("window")
    );
    assert_eq!(field(|p| p.max_open_for = SEC), Some("max_open_for"));
    assert_eq!(field(|p| p.half_open_probes = 0), Some("half_open_probes"));
    assert_eq!(
        field(|p| p.probe_timeout = Duration::ZERO),
        Some("probe_timeout")
    );
    assert_eq!(
        field(|p| p.max_ejection_percent = 101),
        Some("max_ejection_percent")
    );
}

/// state_labels_and_gauge_values: states render as the metric labels and
/// gauge numbers the dashboards expect.
#[test]
fn state_labels_and_gauge_values() {
    let states = [State::Closed, State::Open, State::HalfOpen];
    let labels: Vec<_> = states.iter().map(|s| s.to_string()).collect();
    assert_eq!(labels, ["closed", "open", "half_open"]);
    assert_eq!(states.map(State::as_u8), [0, 1, 2]);
}
