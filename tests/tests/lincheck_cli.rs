//! The `lincheck` binary keeps the contract scripts rely on: exit 0 for a
//! linearizable history, 1 (with the object and witness on stdout) for a
//! violation, 2 for an exhausted budget or bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const LINEARIZABLE: &str = r#"{"client":1,"key":"k","op":"write","value":"a","invoke_ns":0,"complete_ns":10}
{"client":2,"key":"k","op":"read","invoke_ns":20,"complete_ns":30,"result":"a"}
{"client":3,"key":"k","op":"write","value":"b","invoke_ns":40,"error":"timed out"}
"#;

const STALE_READ: &str = r#"{"client":1,"key":"k","op":"write","value":"a","invoke_ns":0,"complete_ns":10}
{"client":1,"key":"k","op":"write","value":"b","invoke_ns":20,"complete_ns":30}
{"client":2,"key":"other","op":"read","invoke_ns":20,"complete_ns":30,"result":null}
{"client":2,"key":"k","op":"read","invoke_ns":40,"complete_ns":50,"result":"a"}
"#;

fn lincheck(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lincheck"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lincheck");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn linearizable_history_exits_0() {
    let out = lincheck(&["-"], LINEARIZABLE);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("linearizable: 3 operations on 1 objects"));
}

#[test]
fn stale_read_exits_1_naming_the_object_and_the_operations() {
    let out = lincheck(&["-"], STALE_READ);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("object \"k\" (3 operations)"), "{stdout}");
    assert!(!stdout.contains("\"other\""), "{stdout}");
    for op in [
        "client 1 write \"a\" [0, 10]",
        "client 1 write \"b\" [20, 30]",
        "client 2 read [40, 50] -> \"a\"",
    ] {
        assert!(stdout.contains(op), "{op} missing from {stdout}");
    }
}

#[test]
fn history_read_from_a_file_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.jsonl");
    std::fs::write(&path, STALE_READ).unwrap();
    let out = lincheck(&["--quiet", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn exhausted_budget_exits_2_as_unknown() {
    let out = lincheck(&["--max-steps", "1", "-"], LINEARIZABLE);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_input_exits_2_with_the_line_number() {
    let bad =
        format!("{LINEARIZABLE}{{\"client\":1,\"key\":\"k\",\"op\":\"write\",\"invoke_ns\":5}}\n");
    let out = lincheck(&["-"], &bad);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 4: a write needs a `value`"),
        "{stderr}"
    );
    let missing = lincheck(&["/nonexistent/history.jsonl"], "");
    assert_eq!(missing.status.code(), Some(2));
    let usage = lincheck(&[], "");
    assert_eq!(usage.status.code(), Some(2));
}
