//! Operations and their JSON-lines encoding (format in the parent module's doc).

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted line, so a corrupt file cannot exhaust memory.
pub const MAX_LINE_BYTES: u64 = 16 << 20;

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub invoke_ns: u64,
    pub kind: OpKind,
    /// Why an indeterminate operation failed; for people, the checker ignores it.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `complete_ns: None`: indeterminate.
    Write {
        value: String,
        complete_ns: Option<u64>,
    },
    /// `result: None`: indeterminate.
    Read { result: Option<ReadResult> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub complete_ns: u64,
    /// `None`: not found.
    pub value: Option<String>,
}

impl Operation {
    pub fn write(
        client: u64,
        key: impl Into<String>,
        value: impl Into<String>,
        invoke_ns: u64,
        complete_ns: u64,
    ) -> Self {
        Self::new(
            client,
            key,
            invoke_ns,
            OpKind::Write {
                value: value.into(),
                complete_ns: Some(complete_ns),
            },
        )
    }

    pub fn write_indeterminate(
        client: u64,
        key: impl Into<String>,
        value: impl Into<String>,
        invoke_ns: u64,
    ) -> Self {
        Self::new(
            client,
            key,
            invoke_ns,
            OpKind::Write {
                value: value.into(),
                complete_ns: None,
            },
        )
    }

    /// A completed read that returned `value` (`None`: not found).
    pub fn read(
        client: u64,
        key: impl Into<String>,
        invoke_ns: u64,
        complete_ns: u64,
        value: Option<&str>,
    ) -> Self {
        Self::new(
            client,
            key,
            invoke_ns,
            OpKind::Read {
                result: Some(ReadResult {
                    complete_ns,
                    value: value.map(str::to_owned),
                }),
            },
        )
    }

    pub fn read_indeterminate(client: u64, key: impl Into<String>, invoke_ns: u64) -> Self {
        Self::new(client, key, invoke_ns, OpKind::Read { result: None })
    }

    fn new(client: u64, key: impl Into<String>, invoke_ns: u64, kind: OpKind) -> Self {
        Operation {
            client,
            key: key.into(),
            invoke_ns,
            kind,
            error: None,
        }
    }

    pub fn complete_ns(&self) -> Option<u64> {
        match &self.kind {
            OpKind::Write { complete_ns, .. } => *complete_ns,
            OpKind::Read { result } => result.as_ref().map(|r| r.complete_ns),
        }
    }

    pub fn is_indeterminate(&self) -> bool {
        self.complete_ns().is_none()
    }

    /// Rules a history must keep that the types do not enforce.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.complete_ns()
            && c < self.invoke_ns
        {
            return Err(format!(
                "complete_ns {c} is before invoke_ns {}",
                self.invoke_ns
            ));
        }
        if self.error.is_some() && !self.is_indeterminate() {
            return Err("`error` is only allowed on indeterminate operations".into());
        }
        Ok(())
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.complete_ns() {
            Some(c) => format!("{c}]"),
            None => "never) indeterminate".into(),
        };
        let interval = format!("[{}, {end}", self.invoke_ns);
        match &self.kind {
            OpKind::Write { value, .. } => {
                write!(f, "client {} write {value:?} {interval}", self.client)?
            }
            OpKind::Read { result } => {
                write!(f, "client {} read {interval}", self.client)?;
                if let Some(r) = result {
                    match &r.value {
                        Some(v) => write!(f, " -> {v:?}")?,
                        None => write!(f, " -> not found")?,
                    }
                }
            }
        }
        if let Some(e) = &self.error {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

/// How bytes read or written become history values: UTF-8 as is, unless it
/// starts with `0x`; anything else as `0x` and lowercase hex. Injective, so
/// distinct byte strings stay distinct.
pub fn value_label(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.starts_with("0x") => s.to_owned(),
        _ => format!("0x{}", hex::encode(bytes)),
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LineKind {
    Write,
    Read,
}

/// The wire form of one line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    client: u64,
    key: String,
    op: LineKind,
    invoke_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    complete_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// Outer `None`: absent; `Some(None)`: `null`, not found.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    result: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl From<&Operation> for Line {
    fn from(op: &Operation) -> Line {
        let (kind, value, result) = match &op.kind {
            OpKind::Write { value, .. } => (LineKind::Write, Some(value.clone()), None),
            OpKind::Read { result } => (
                LineKind::Read,
                None,
                result.as_ref().map(|r| r.value.clone()),
            ),
        };
        Line {
            client: op.client,
            key: op.key.clone(),
            op: kind,
            invoke_ns: op.invoke_ns,
            complete_ns: op.complete_ns(),
            value,
            result,
            error: op.error.clone(),
        }
    }
}

impl TryFrom<Line> for Operation {
    type Error = String;

    fn try_from(l: Line) -> Result<Operation, String> {
        let kind = match l.op {
            LineKind::Write => {
                if l.result.is_some() {
                    return Err("a write has no `result`".into());
                }
                let value = l.value.ok_or("a write needs a `value`")?;
                OpKind::Write {
                    value,
                    complete_ns: l.complete_ns,
                }
            }
            LineKind::Read => {
                if l.value.is_some() {
                    return Err("a read has no `value` (what it returned is `result`)".into());
                }
                let result = match (l.complete_ns, l.result) {
                    (Some(complete_ns), Some(value)) => Some(ReadResult { complete_ns, value }),
                    (Some(_), None) => {
                        return Err(
                            "a completed read needs a `result` (a string, or null for not found)"
                                .into(),
                        );
                    }
                    (None, Some(_)) => {
                        return Err(
                            "an indeterminate read (no `complete_ns`) has no `result`".into()
                        );
                    }
                    (None, None) => None,
                };
                OpKind::Read { result }
            }
        };
        let op = Operation {
            client: l.client,
            key: l.key,
            invoke_ns: l.invoke_ns,
            kind,
            error: l.error,
        };
        op.validate()?;
        Ok(op)
    }
}

/// One operation as one JSON line, without the newline.
pub fn to_json_line(op: &Operation) -> String {
    serde_json::to_string(&Line::from(op)).expect("a history line always serializes")
}

/// Decodes one line (without its newline).
pub fn parse_line(text: &str) -> Result<Operation, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        // serde_json appends "at line 1 column N"; the column is what helps.
        let msg = e.to_string();
        let msg = msg
            .rsplit_once(" at line ")
            .map_or(msg.as_str(), |(m, _)| m);
        format!("column {}: {msg}", e.column())
    })?;
    Operation::try_from(line)
}

#[derive(Debug)]
pub struct DecodeError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a whole history; the first bad line is an error naming it.
pub fn read_history(mut input: impl BufRead) -> Result<Vec<Operation>, DecodeError> {
    let mut ops = Vec::new();
    let mut buf = Vec::new();
    for line in 1.. {
        buf.clear();
        let err = |message: String| DecodeError { line, message };
        let n = input
            .by_ref()
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| err(format!("read error: {e}")))?;
        if n == 0 {
            break;
        }
        if buf.len() as u64 > MAX_LINE_BYTES {
            return Err(err(format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&buf).map_err(|e| err(format!("not UTF-8: {e}")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        ops.push(parse_line(text).map_err(err)?);
    }
    Ok(ops)
}

/// Encodes a history, one operation per line.
pub fn write_history(mut out: impl Write, ops: &[Operation]) -> io::Result<()> {
    for op in ops {
        writeln!(out, "{}", to_json_line(op))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(text: &str) -> Result<Vec<Operation>, DecodeError> {
        read_history(text.as_bytes())
    }

    #[test]
    fn documented_example_decodes_to_the_four_kinds_of_operation() {
        let text = r#"{"client":1,"key":"k0","op":"write","value":"c1-0","invoke_ns":1000,"complete_ns":5000}
{"client":2,"key":"k0","op":"read","invoke_ns":6000,"complete_ns":9000,"result":"c1-0"}

{"client":2,"key":"k1","op":"read","invoke_ns":9500,"complete_ns":9900,"result":null}
{"client":3,"key":"k0","op":"write","value":"c3-0","invoke_ns":7000,"error":"timed out"}
{"client":3,"key":"k1","op":"read","invoke_ns":7000,"complete_ns":null}
"#;
        let mut w = Operation::write_indeterminate(3, "k0", "c3-0", 7000);
        w.error = Some("timed out".into());
        assert_eq!(
            decode(text).unwrap(),
            vec![
                Operation::write(1, "k0", "c1-0", 1000, 5000),
                Operation::read(2, "k0", 6000, 9000, Some("c1-0")),
                Operation::read(2, "k1", 9500, 9900, None),
                w,
                Operation::read_indeterminate(3, "k1", 7000),
            ]
        );
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line_and_the_problem() {
        let good =
            r#"{"client":1,"key":"k","op":"write","value":"v","invoke_ns":1,"complete_ns":2}"#;
        let cases = [
            ("{not json", "column"),
            (
                r#"{"client":1,"key":"k","op":"write","invoke_ns":1}"#,
                "needs a `value`",
            ),
            (
                r#"{"client":1,"key":"k","op":"read","invoke_ns":1,"complete_ns":2}"#,
                "needs a `result`",
            ),
            (
                r#"{"client":1,"key":"k","op":"read","invoke_ns":1,"result":"v"}"#,
                "indeterminate read",
            ),
            (
                r#"{"client":1,"key":"k","op":"read","invoke_ns":1,"complete_ns":2,"result":"v","value":"v"}"#,
                "has no `value`",
            ),
            (
                r#"{"client":1,"key":"k","op":"write","value":"v","invoke_ns":1,"complete_ns":2,"result":null}"#,
                "has no `result`",
            ),
            (
                r#"{"client":1,"key":"k","op":"write","value":"v","invoke_ns":5,"complete_ns":2}"#,
                "before invoke_ns",
            ),
            (
                r#"{"client":1,"key":"k","op":"write","value":"v","invoke_ns":1,"completed_ns":2}"#,
                "unknown field",
            ),
            (
                r#"{"client":1,"key":"k","op":"write","value":"v","invoke_ns":1,"complete_ns":2,"error":"x"}"#,
                "only allowed on indeterminate",
            ),
            (
                r#"{"client":1,"key":"k","op":"delete","invoke_ns":1}"#,
                "unknown variant",
            ),
            (
                r#"{"client":-1,"key":"k","op":"read","invoke_ns":1}"#,
                "column",
            ),
            (
                r#"{"client":1,"key":"k","op":"write","value":5,"invoke_ns":1}"#,
                "string",
            ),
        ];
        for (bad, want) in cases {
            let text = format!("{good}\n\n{bad}\n{good}\n");
            let e = decode(&text).expect_err(bad);
            assert_eq!(e.line, 3, "{bad}: {e}");
            assert!(e.to_string().contains(want), "{bad}: {e} lacks {want:?}");
        }
        let e = decode("\u{0}\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = read_history(&b"\n\xff\xfe\n"[..]).unwrap_err();
        assert_eq!((e.line, e.message.starts_with("not UTF-8")), (2, true));
    }

    #[test]
    fn value_label_keeps_text_and_hex_encodes_the_rest_injectively() {
        assert_eq!(value_label(b"c1-7"), "c1-7");
        assert_eq!(value_label(&[0xff, 0]), "0xff00");
        assert_eq!(value_label(b"0xff00"), "0x307866663030");
        assert_ne!(value_label(b"0xff00"), value_label(&[0xff, 0]));
    }

    fn arb_op() -> impl Strategy<Value = Operation> {
        let value = "[a-z0-9 \"\\\\]{0,6}";
        (
            any::<u64>(),
            "[a-z]{1,3}",
            0u64..1 << 40,
            0u64..1 << 20,
            prop::option::of(value),
            0u8..4,
            prop::option::of(value),
        )
            .prop_map(|(client, key, invoke, len, v, shape, err)| {
                let mut op = match shape {
                    0 => Operation::write(client, key, v.unwrap_or_default(), invoke, invoke + len),
                    1 => Operation::write_indeterminate(client, key, v.unwrap_or_default(), invoke),
                    2 => Operation::read(client, key, invoke, invoke + len, v.as_deref()),
                    _ => Operation::read_indeterminate(client, key, invoke),
                };
                if op.is_indeterminate() {
                    op.error = err;
                }
                op
            })
    }

    proptest! {
        #[test]
        fn any_history_survives_an_encode_decode_round_trip(
            ops in prop::collection::vec(arb_op(), 0..20)
        ) {
            let mut out = Vec::new();
            write_history(&mut out, &ops).unwrap();
            prop_assert_eq!(read_history(&out[..]).unwrap(), ops);
        }
    }
}
