//! A linearizability checker for per-object read/write registers, the recorder
//! that feeds it from concurrent clients, and the history format they share
//! (issue [D] point 4; docs/linearizability.md).
//!
//! # Model
//!
//! Every object (a `key`) is an independent register whose initial state is
//! "not found". A write sets the register; a read returns its state. An
//! operation runs from its invocation to its completion. An *indeterminate*
//! operation (timed out, failed, or never completed) has no completion: a write
//! may take effect at any point after its invocation, or never; a read
//! constrains nothing and is ignored. A history is linearizable when, for every
//! object, its completed operations (and any subset of its indeterminate
//! writes) can be ordered so that each takes effect between its invocation and
//! completion and every read returns the latest preceding write. Operations
//! whose intervals touch (one completes at the very nanosecond another is
//! invoked) count as concurrent.
//!
//! # History format: JSON lines
//!
//! One operation per line; blank lines are skipped; unknown fields are errors
//! (so that a misspelt `complete_ns` cannot silently make an operation
//! indeterminate). Times are nanoseconds on any one monotonic clock shared by
//! all clients of the history; lines need not be in time order.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `client` | integer | who issued the operation (only used in explanations) |
//! | `key` | string | the object; objects are checked independently |
//! | `op` | `"write"` or `"read"` | the operation |
//! | `invoke_ns` | integer | when the operation was invoked |
//! | `complete_ns` | integer, absent or `null` | when it completed; absent or `null`: indeterminate |
//! | `value` | string | writes only (required): the value written |
//! | `result` | string or `null` | completed reads only (required): the value read, `null` for "not found" |
//! | `error` | string | indeterminate operations only (optional): why, for people |
//!
//! Values are opaque strings compared for equality. [`value_label`] is how the
//! recorder turns stored bytes into them (UTF-8 as is, anything else as `0x`
//! and hex). For example:
//!
//! ```text
//! {"client":1,"key":"k0","op":"write","value":"c1-0","invoke_ns":1000,"complete_ns":5000}
//! {"client":2,"key":"k0","op":"read","invoke_ns":6000,"complete_ns":9000,"result":"c1-0"}
//! {"client":2,"key":"k1","op":"read","invoke_ns":9500,"complete_ns":9900,"result":null}
//! {"client":3,"key":"k0","op":"write","value":"c3-0","invoke_ns":7000,"error":"timed out"}
//! ```
//!
//! [`read_history`] decodes such a file, returning the first bad line's number
//! and what is wrong with it; [`write_history`] encodes one.
//!
//! # Algorithm and bounds
//!
//! [`check`] partitions the history by key and runs, per object, the Wing–Gong
//! search as refined by Lowe ("just-in-time linearization", as in porcupine):
//! invocation and completion events in time order in a doubly linked list; an
//! operation is linearized when its invocation is reached and the register
//! accepts it, and the search backtracks when a completion is reached whose
//! operation is not yet linearized. Each (set of linearized operations,
//! register state) pair is explored once. Indeterminate writes have no
//! completion event and need not be linearized, which covers "never took
//! effect". Every visited event is one step; an object whose search exceeds
//! [`CheckConfig::max_steps`] is reported as unknown rather than searched
//! forever, and memory grows at most by one cache entry per step.
//!
//! A violation is explained by a witness: a subset of the object's operations
//! that is itself not linearizable, shrunk by dropping one operation at a time
//! while the rest stays non-linearizable (within
//! [`CheckConfig::max_minimize_steps`]). Only drops that cannot hide a
//! violation are tried: any read, and a write none of whose value the
//! remaining reads returned; so if the witness cannot be linearized, neither
//! can the history.

mod checker;
mod history;
mod recorder;

pub use checker::{CheckConfig, ObjectUnknown, Report, Verdict, Violation, check};
pub use history::{
    DecodeError, OpKind, Operation, ReadResult, parse_line, read_history, to_json_line,
    value_label, write_history,
};
pub use recorder::{HistoryRecorder, Pending, RecordError};
