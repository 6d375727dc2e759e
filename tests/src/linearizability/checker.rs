//! The per-object search (Wing–Gong with Lowe's just-in-time linearization and
//! memoization) and the shrinking of a violation to a small witness.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::history::{OpKind, Operation};

/// Search bounds, per object.
#[derive(Clone, Copy, Debug)]
pub struct CheckConfig {
    /// Events visited before the object's verdict is "unknown".
    pub max_steps: u64,
    /// Events visited while shrinking a violation to its witness; when spent,
    /// the witness is reported as it stands (still a valid witness).
    pub max_minimize_steps: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            max_steps: 2_000_000,
            max_minimize_steps: 2_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// No violation found, but some object's search ran out of budget.
    Unknown,
}

/// A non-linearizable object and why.
#[derive(Clone, Debug)]
pub struct Violation {
    pub key: String,
    /// Operations of this object in the history (indeterminate reads included).
    pub operations: usize,
    /// A subset of the object's operations, in invocation order, that is not
    /// linearizable by itself, so neither is the history.
    pub witness: Vec<Operation>,
    /// Whether shrinking finished: no single read, nor any write whose value no
    /// remaining read returned, can be dropped from the witness.
    pub minimal: bool,
}

#[derive(Clone, Debug)]
pub struct ObjectUnknown {
    pub key: String,
    pub operations: usize,
    pub steps: u64,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub objects: usize,
    pub operations: usize,
    /// Events visited by the searches (not counting shrinking).
    pub steps: u64,
    pub violations: Vec<Violation>,
    pub unknown: Vec<ObjectUnknown>,
}

impl Report {
    /// A violation anywhere wins over an unknown elsewhere.
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::NotLinearizable
        } else if !self.unknown.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        }
    }

    pub fn is_linearizable(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict() {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "NOT linearizable",
            Verdict::Unknown => "unknown (search budget exhausted)",
        };
        writeln!(
            f,
            "{verdict}: {} operations on {} objects, {} search steps",
            self.operations, self.objects, self.steps
        )?;
        for v in &self.violations {
            writeln!(
                f,
                "object {:?} ({} operations) is not linearizable; witness: these {} of them cannot be linearized even on their own{}:",
                v.key,
                v.operations,
                v.witness.len(),
                if v.minimal {
                    ""
                } else {
                    " (shrinking budget spent; a smaller witness may exist)"
                }
            )?;
            for op in &v.witness {
                writeln!(f, "  {op}")?;
            }
        }
        for u in &self.unknown {
            writeln!(
                f,
                "object {:?} ({} operations): gave up after {} steps",
                u.key, u.operations, u.steps
            )?;
        }
        Ok(())
    }
}

/// Checks every object of `history` independently.
pub fn check(history: &[Operation], cfg: &CheckConfig) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut report = Report {
        objects: by_key.len(),
        operations: history.len(),
        steps: 0,
        violations: Vec::new(),
        unknown: Vec::new(),
    };
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| (o.invoke_ns, o.complete_ns().unwrap_or(u64::MAX)));
        let operations = ops.len();
        // An indeterminate read constrains nothing.
        let ops: Vec<&Operation> = ops
            .into_iter()
            .filter(|o| !matches!(o.kind, OpKind::Read { result: None }))
            .collect();
        let prepared = prepare(&ops);
        let (outcome, steps) = search(&prepared, cfg.max_steps);
        report.steps += steps;
        match outcome {
            Outcome::Linearizable => {}
            Outcome::Unknown => report.unknown.push(ObjectUnknown {
                key: key.to_owned(),
                operations,
                steps,
            }),
            Outcome::NotLinearizable => {
                let (keep, minimal) = shrink(&prepared, cfg.max_minimize_steps);
                report.violations.push(Violation {
                    key: key.to_owned(),
                    operations,
                    witness: keep.into_iter().map(|i| ops[i].clone()).collect(),
                    minimal,
                });
            }
        }
    }
    report
}

/// Register state or value: 0 is "not found", others are interned values.
type Value = u32;
const NOT_FOUND: Value = 0;

#[derive(Clone, Copy, Debug)]
enum Action {
    Write(Value),
    Read(Value),
}

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
struct Op {
    invoke_ns: u64,
    /// `None`: an indeterminate write, which need never be linearized.
    complete_ns: Option<u64>,
    action: Action,
}

fn prepare<'a>(ops: &[&'a Operation]) -> Vec<Op> {
    let mut interned: HashMap<&'a str, Value> = HashMap::new();
    let mut intern = |v: Option<&'a str>| match v {
        None => NOT_FOUND,
        Some(s) => {
            let next = Value::try_from(interned.len() + 1).expect("fewer than 2^32 values");
            *interned.entry(s).or_insert(next)
        }
    };
    ops.iter()
        .map(|o| match &o.kind {
            OpKind::Write { value, complete_ns } => Op {
                invoke_ns: o.invoke_ns,
                complete_ns: *complete_ns,
                action: Action::Write(intern(Some(value))),
            },
            OpKind::Read { result } => {
                let r = result
                    .as_ref()
                    .expect("indeterminate reads are filtered out");
                Op {
                    invoke_ns: o.invoke_ns,
                    complete_ns: Some(r.complete_ns),
                    action: Action::Read(intern(r.value.as_deref())),
                }
            }
        })
        .collect()
}

/// The register: the state after `action`, or `None` if it cannot happen now.
fn step(state: Value, action: Action) -> Option<Value> {
    match action {
        Action::Write(v) => Some(v),
        Action::Read(v) => (v == state).then_some(state),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Linearizable,
    NotLinearizable,
    Unknown,
}

const NIL: usize = usize::MAX;

/// Invocation and completion events in time order, as a doubly linked list
/// with a head sentinel at 0 that operations are lifted out of and put back
/// into in LIFO order (dancing links).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per event: its operation and whether it is the completion.
    event: Vec<(usize, bool)>,
    call: Vec<usize>,
    /// `NIL` for an indeterminate write.
    ret: Vec<usize>,
}

impl Events {
    fn new(ops: &[Op]) -> Events {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            order.push((o.invoke_ns, false, i));
            if let Some(c) = o.complete_ns {
                order.push((c, true, i));
            }
        }
        // At equal times invocations come first: touching intervals overlap.
        order.sort_unstable();
        let m = order.len();
        let mut e = Events {
            next: (1..=m).chain([NIL]).collect(),
            prev: [NIL].into_iter().chain(0..m).collect(),
            event: vec![(NIL, false)],
            call: vec![NIL; ops.len()],
            ret: vec![NIL; ops.len()],
        };
        for (n, &(_, is_ret, op)) in order.iter().enumerate() {
            e.event.push((op, is_ret));
            if is_ret {
                e.ret[op] = n + 1;
            } else {
                e.call[op] = n + 1;
            }
        }
        e
    }

    fn unlink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = x;
        if x != NIL {
            self.prev[x] = p;
        }
    }

    fn relink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        if x != NIL {
            self.prev[x] = n;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call[op]);
        if self.ret[op] != NIL {
            self.unlink(self.ret[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret[op] != NIL {
            self.relink(self.ret[op]);
        }
        self.relink(self.call[op]);
    }
}

/// Lowe's just-in-time linearization search, memoizing (linearized set,
/// state); returns the outcome and the events visited.
fn search(ops: &[Op], max_steps: u64) -> (Outcome, u64) {
    let mut events = Events::new(ops);
    let mut remaining = ops.iter().filter(|o| o.complete_ns.is_some()).count();
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Box<[u64]>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state = NOT_FOUND;
    let mut steps = 0u64;
    let mut cur = events.next[0];
    loop {
        if remaining == 0 {
            return (Outcome::Linearizable, steps);
        }
        // Every pending completion lies after `cur`: the list before it holds
        // only invocations, or the search would have stopped there.
        assert_ne!(cur, NIL, "ran past the last event with completions pending");
        if steps == max_steps {
            return (Outcome::Unknown, steps);
        }
        steps += 1;
        let (op, is_ret) = events.event[cur];
        if !is_ret {
            if let Some(after) = step(state, ops[op].action) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone().into_boxed_slice(), after)) {
                    stack.push((op, state));
                    state = after;
                    events.lift(op);
                    if ops[op].complete_ns.is_some() {
                        remaining -= 1;
                    }
                    cur = events.next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cur = events.next[cur];
        } else {
            // `op` completed before being linearized: undo the latest choice.
            let Some((undo, before)) = stack.pop() else {
                return (Outcome::NotLinearizable, steps);
            };
            linearized[undo / 64] &= !(1 << (undo % 64));
            state = before;
            events.unlift(undo);
            if ops[undo].complete_ns.is_some() {
                remaining += 1;
            }
            cur = events.next[events.call[undo]];
        }
    }
}

/// Shrinks a non-linearizable object history to a subset that is still not
/// linearizable, dropping one operation at a time, latest first. Returns the
/// indices kept and whether shrinking finished within `budget` steps.
///
/// Only drops that preserve "the full history is linearizable implies the
/// subset is" are tried: a read (the register's state never depends on one),
/// or a write whose value no remaining read returned (no read can have
/// observed it). So the witness is never a violation the full history lacks,
/// such as a read whose write was dropped.
fn shrink(ops: &[Op], mut budget: u64) -> (Vec<usize>, bool) {
    let mut keep: Vec<usize> = (0..ops.len()).collect();
    loop {
        let mut dropped_any = false;
        let mut i = keep.len();
        while i > 0 {
            i -= 1;
            let cand = keep[i];
            if let Action::Write(v) = ops[cand].action {
                let observed = keep
                    .iter()
                    .any(|&k| matches!(ops[k].action, Action::Read(r) if r == v));
                if observed {
                    continue;
                }
            }
            let trial: Vec<Op> = keep
                .iter()
                .filter(|&&k| k != cand)
                .map(|&k| ops[k])
                .collect();
            let (outcome, steps) = search(&trial, budget);
            budget -= steps;
            match outcome {
                Outcome::NotLinearizable => {
                    keep.remove(i);
                    dropped_any = true;
                }
                Outcome::Linearizable => {}
                Outcome::Unknown => return (keep, false),
            }
        }
        if !dropped_any {
            return (keep, true);
        }
    }
}

#[cfg(test)]
mod tests;
