//! Hand-written classic histories, and properties against a brute-force
//! oracle and generated histories.

use super::*;
use proptest::prelude::*;

fn verdict(ops: &[Operation]) -> Verdict {
    check(ops, &CheckConfig::default()).verdict()
}

fn w(client: u64, value: &str, invoke: u64, complete: u64) -> Operation {
    Operation::write(client, "x", value, invoke, complete)
}

fn wi(client: u64, value: &str, invoke: u64) -> Operation {
    Operation::write_indeterminate(client, "x", value, invoke)
}

fn r(client: u64, invoke: u64, complete: u64, value: Option<&str>) -> Operation {
    Operation::read(client, "x", invoke, complete, value)
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
}

#[test]
fn sequential_write_then_read_of_it_is_linearizable() {
    let h = [r(1, 0, 5, None), w(1, "a", 10, 20), r(2, 30, 40, Some("a"))];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn stale_read_after_a_completed_write_is_not_linearizable() {
    let h = [w(1, "a", 0, 10), w(1, "b", 20, 30), r(2, 40, 50, Some("a"))];
    let report = check(&h, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
    let v = &report.violations[0];
    assert_eq!(v.key, "x");
    assert!(v.minimal);
    assert_eq!(v.witness, h.to_vec(), "{report}");
}

#[test]
fn not_found_after_a_completed_write_is_not_linearizable() {
    assert_eq!(
        verdict(&[w(1, "a", 0, 10), r(2, 20, 30, None)]),
        Verdict::NotLinearizable
    );
}

#[test]
fn read_of_a_value_never_written_is_not_linearizable_and_explained_alone() {
    let h = [
        w(1, "a", 0, 10),
        r(2, 20, 30, Some("a")),
        r(3, 25, 35, Some("ghost")),
        w(1, "b", 40, 50),
    ];
    let report = check(&h, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    assert_eq!(report.violations[0].witness, vec![h[2].clone()], "{report}");
}

#[test]
fn two_readers_seeing_concurrent_writes_in_opposite_orders_is_not_linearizable() {
    let h = [
        w(1, "a", 0, 200),
        w(2, "b", 0, 200),
        r(3, 10, 20, Some("a")),
        r(3, 30, 40, Some("b")),
        r(4, 10, 20, Some("b")),
        r(4, 30, 40, Some("a")),
    ];
    let report = check(&h, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    assert_eq!(report.violations[0].witness.len(), 6, "{report}");
}

#[test]
fn concurrent_writes_may_be_observed_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        let h = [
            w(1, "a", 0, 100),
            w(2, "b", 5, 105),
            r(3, 10, 20, Some(first)),
            r(3, 30, 40, Some(second)),
            r(4, 110, 120, Some(second)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable, "{first} then {second}");
    }
}

#[test]
fn after_concurrent_writes_complete_either_may_be_the_final_value() {
    for last in ["a", "b"] {
        let h = [
            w(1, "a", 0, 100),
            w(2, "b", 0, 100),
            r(3, 110, 120, Some(last)),
            r(4, 130, 140, Some(last)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable, "{last}");
    }
}

#[test]
fn final_value_cannot_flip_once_all_writes_completed() {
    let h = [
        w(1, "a", 0, 100),
        w(2, "b", 0, 100),
        r(3, 110, 120, Some("a")),
        r(4, 130, 140, Some("b")),
    ];
    assert_eq!(verdict(&h), Verdict::NotLinearizable);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The read completes at the instant the write is invoked.
    assert_eq!(
        verdict(&[w(1, "a", 10, 20), r(2, 0, 10, Some("a"))]),
        Verdict::Linearizable
    );
    assert_eq!(
        verdict(&[w(1, "a", 11, 20), r(2, 0, 10, Some("a"))]),
        Verdict::NotLinearizable
    );
}

#[test]
fn indeterminate_write_that_later_becomes_visible_is_linearizable() {
    let h = [
        wi(1, "a", 0),
        r(2, 10, 20, None),
        r(2, 30, 40, Some("a")),
        r(3, 50, 60, Some("a")),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn indeterminate_write_that_never_took_effect_is_linearizable() {
    let h = [
        w(1, "a", 0, 10),
        wi(2, "b", 20),
        r(3, 30, 40, Some("a")),
        r(3, 1_000, 2_000, Some("a")),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn indeterminate_write_visible_then_invisible_is_not_linearizable() {
    let from_nothing = [wi(1, "a", 0), r(2, 10, 20, Some("a")), r(2, 30, 40, None)];
    assert_eq!(verdict(&from_nothing), Verdict::NotLinearizable);
    let over_a_write = [
        w(1, "a", 0, 5),
        wi(1, "b", 10),
        r(2, 20, 30, Some("b")),
        r(3, 40, 50, Some("a")),
    ];
    let report = check(&over_a_write, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    assert_eq!(report.violations[0].witness.len(), 4, "{report}");
}

#[test]
fn indeterminate_write_cannot_explain_a_read_that_completed_before_it_began() {
    let h = [r(1, 0, 10, Some("a")), wi(2, "a", 20)];
    assert_eq!(verdict(&h), Verdict::NotLinearizable);
}

#[test]
fn indeterminate_reads_constrain_nothing() {
    let h = [
        w(1, "a", 0, 10),
        Operation::read_indeterminate(2, "x", 20),
        r(3, 30, 40, Some("a")),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn objects_are_checked_independently_and_the_bad_one_is_named() {
    let h = [
        Operation::write(1, "good", "v", 0, 10),
        Operation::write(1, "bad", "v", 0, 10),
        // Linearizable only if keys were mixed up: "bad" holds "v".
        Operation::read(2, "good", 20, 30, Some("v")),
        Operation::read(2, "bad", 20, 30, None),
    ];
    let report = check(&h, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    assert_eq!(report.objects, 2);
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].key, "bad");
    let text = report.to_string();
    assert!(text.contains("object \"bad\""), "{text}");
    assert!(!text.contains("\"good\""), "{text}");
}

#[test]
fn witness_of_a_stale_read_amid_noise_is_the_write_and_the_read() {
    let mut h = Vec::new();
    for i in 0..30u64 {
        let t = i * 100;
        h.push(w(1, &format!("v{i}"), t, t + 10));
        h.push(r(2, t + 20, t + 30, Some(&format!("v{i}"))));
        h.push(r(3, t + 20, t + 30, Some(&format!("v{i}"))));
    }
    // Client 4 reads v3 long after v4 completed.
    h.push(r(4, 420, 430, Some("v3")));
    let report = check(&h, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    let v = &report.violations[0];
    assert!(v.minimal, "{report}");
    let witness: Vec<String> = v.witness.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        witness,
        [
            "client 1 write \"v3\" [300, 310]",
            "client 1 write \"v4\" [400, 410]",
            "client 4 read [420, 430] -> \"v3\"",
        ],
        "{report}"
    );
}

#[test]
fn search_over_budget_is_unknown_not_a_verdict() {
    // Many concurrent writes and a read of the first: a real search.
    let mut h: Vec<Operation> = (0..12).map(|i| w(i, &format!("v{i}"), 0, 1_000)).collect();
    h.push(r(99, 2_000, 3_000, Some("v0")));
    let tight = CheckConfig {
        max_steps: 5,
        max_minimize_steps: 5,
    };
    let report = check(&h, &tight);
    assert_eq!(report.verdict(), Verdict::Unknown, "{report}");
    assert_eq!(report.unknown[0].key, "x");
    assert_eq!(report.unknown[0].steps, 5);
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // A violation elsewhere still wins over an unknown.
    h.push(Operation::read(1, "y", 0, 1, Some("ghost")));
    assert_eq!(check(&h, &tight).verdict(), Verdict::NotLinearizable);
}

#[test]
fn exhausted_shrinking_still_returns_a_valid_witness() {
    let h = [
        w(1, "a", 0, 10),
        w(1, "b", 20, 30),
        r(2, 40, 50, Some("a")),
        r(3, 60, 70, Some("b")),
    ];
    let cfg = CheckConfig {
        max_steps: 1_000,
        max_minimize_steps: 1,
    };
    let report = check(&h, &cfg);
    let v = &report.violations[0];
    assert!(!v.minimal);
    assert_eq!(verdict(&v.witness), Verdict::NotLinearizable, "{report}");
}

/// Refuting a read after ten concurrent writes means trying every order
/// of them: 10! orders without memoization, 2^10 sets of writes times the
/// last value with it.
#[test]
fn memoization_makes_refuting_many_concurrent_writes_cheap() {
    let mut h: Vec<Operation> = (0..10).map(|i| w(i, &format!("v{i}"), i, 1_000)).collect();
    h.push(r(99, 2_000, 3_000, Some("ghost")));
    let report = check(&h, &CheckConfig::default());
    assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
    assert!(report.steps < 100_000, "{} steps", report.steps);
    assert_eq!(report.violations[0].witness, vec![h[10].clone()]);
}

#[test]
fn wide_concurrency_with_a_final_read_is_linearizable() {
    let mut h = Vec::new();
    for i in 0..40u64 {
        let v = format!("v{}", i % 3);
        h.push(w(i, &v, i, 10_000));
        h.push(r(100 + i, i, 10_000, Some(&v)));
    }
    h.push(r(999, 20_000, 20_001, Some("v1")));
    let report = check(&h, &CheckConfig::default());
    assert!(report.is_linearizable(), "{report}");
}

/// Brute force from the definition: try every order of the operations in
/// which no operation precedes one that completed before it was invoked.
fn brute_force(ops: &[Operation]) -> bool {
    fn go(ops: &[&Operation], done: &mut Vec<bool>, state: Option<&str>) -> bool {
        let pending: Vec<usize> = (0..ops.len())
            .filter(|&i| !done[i] && !ops[i].is_indeterminate())
            .collect();
        if pending.is_empty() {
            return true;
        }
        let deadline = pending
            .iter()
            .filter_map(|&i| ops[i].complete_ns())
            .min()
            .unwrap();
        for i in 0..ops.len() {
            if done[i] || ops[i].invoke_ns > deadline {
                continue;
            }
            let after = match &ops[i].kind {
                OpKind::Write { value, .. } => Some(value.as_str()),
                OpKind::Read { result } => {
                    let got = result.as_ref().unwrap().value.as_deref();
                    if got != state {
                        continue;
                    }
                    state
                }
            };
            done[i] = true;
            let ok = go(ops, done, after);
            done[i] = false;
            if ok {
                return true;
            }
        }
        false
    }
    let ops: Vec<&Operation> = ops
        .iter()
        .filter(|o| !matches!(o.kind, OpKind::Read { result: None }))
        .collect();
    go(&ops, &mut vec![false; ops.len()], None)
}

fn arb_small_op() -> impl Strategy<Value = Operation> {
    (0u64..20, 0u64..8, 0u8..6, 0usize..3).prop_map(|(invoke, len, shape, v)| {
        let value = ["a", "b", "c"][v];
        match shape {
            0 | 1 => w(0, value, invoke, invoke + len),
            2 => wi(0, value, invoke),
            3 => r(0, invoke, invoke + len, None),
            _ => r(0, invoke, invoke + len, Some(value)),
        }
    })
}

/// A history built around a linearization: operation i takes effect at
/// 100 i, its interval a random stretch around that point (so operations
/// overlap), each read returning the state there; some writes are
/// indeterminate (taking effect or not), some reads indeterminate.
fn linearizable_history(spec: &[(usize, bool, u64, u64, u8)], keys: usize) -> Vec<Operation> {
    let mut state: Vec<Option<String>> = vec![None; keys];
    let mut out = Vec::new();
    for (i, &(key, is_write, before, after, fate)) in spec.iter().enumerate() {
        let point = 1_000 + 100 * i as u64;
        let (invoke, complete) = (point - before, point + after);
        let k = format!("k{key}");
        let client = i as u64 % 4;
        if is_write {
            let value = format!("w{i}");
            match fate {
                0 => out.push(Operation::write_indeterminate(client, k, &value, invoke)),
                1 => {
                    out.push(Operation::write_indeterminate(client, k, &value, invoke));
                    continue;
                }
                _ => out.push(Operation::write(client, k, &value, invoke, complete)),
            }
            state[key] = Some(value);
        } else if fate == 0 {
            out.push(Operation::read_indeterminate(client, k, invoke));
        } else {
            out.push(Operation::read(
                client,
                k,
                invoke,
                complete,
                state[key].as_deref(),
            ));
        }
    }
    out
}

fn arb_spec(len: usize, spread: u64) -> impl Strategy<Value = Vec<(usize, bool, u64, u64, u8)>> {
    prop::collection::vec(
        (0usize..3, any::<bool>(), 0..spread, 0..spread, 0u8..8),
        1..len,
    )
}

proptest! {
    #[test]
    fn checker_agrees_with_brute_force_on_small_histories(
        ops in prop::collection::vec(arb_small_op(), 0..7)
    ) {
        let report = check(&ops, &CheckConfig::default());
        prop_assert_eq!(report.is_linearizable(), brute_force(&ops), "{}", report);
        for v in &report.violations {
            prop_assert!(!brute_force(&v.witness), "witness is linearizable: {}", report);
        }
    }

    #[test]
    fn sequential_histories_are_linearizable(spec in arb_spec(120, 50)) {
        let h = linearizable_history(&spec, 3);
        let report = check(&h, &CheckConfig::default());
        prop_assert!(report.is_linearizable(), "{}", report);
    }

    #[test]
    fn overlapping_histories_built_from_a_linearization_are_linearizable(
        spec in arb_spec(120, 400)
    ) {
        let h = linearizable_history(&spec, 3);
        let report = check(&h, &CheckConfig::default());
        prop_assert!(report.is_linearizable(), "{}", report);
    }

    #[test]
    fn a_corrupted_read_in_a_sequential_history_is_detected(
        spec in arb_spec(80, 50),
        pick in any::<prop::sample::Index>(),
        replacement in any::<prop::sample::Index>(),
    ) {
        // Determinate writes only, so each read has exactly one right answer.
        let spec: Vec<_> = spec.into_iter().map(|(k, wr, b, a, f)| (k, wr, b, a, f.max(2))).collect();
        let mut h = linearizable_history(&spec, 3);
        let reads: Vec<usize> = (0..h.len()).filter(|&i| !h[i].is_indeterminate() && matches!(h[i].kind, OpKind::Read { .. })).collect();
        prop_assume!(!reads.is_empty());
        let target = reads[pick.index(reads.len())];
        let key = h[target].key.clone();
        let OpKind::Read { result: Some(result) } = &mut h[target].kind else { unreachable!() };
        // Any other answer: a value written to this key (earlier or later),
        // a value never written, or not found.
        let mut wrong: Vec<Option<String>> = vec![None, Some("never-written".into())];
        wrong.extend(spec.iter().enumerate().filter(|(_, s)| s.1 && format!("k{}", s.0) == key).map(|(i, _)| Some(format!("w{i}"))));
        wrong.retain(|v| *v != result.value);
        result.value = wrong[replacement.index(wrong.len())].clone();
        let report = check(&h, &CheckConfig::default());
        prop_assert_eq!(report.verdict(), Verdict::NotLinearizable, "{}", report);
        prop_assert_eq!(&report.violations[0].key, &key);
        prop_assert!(report.violations[0].witness.contains(&h[target]), "{}", report);
    }
}
