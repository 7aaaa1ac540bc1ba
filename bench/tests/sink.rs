//! `--sink`, the generator's ceiling, over real loopback sockets: at QoS 0 and 1, in fan-out,
//! pairs and fan-in, every message published reaches every subscriber once and in order, and
//! every QoS 1 publish is acknowledged (the run would not finish its count otherwise).

use std::process::Command;

/// Runs the generator against its own sink with a bounded count; gives back its JSON report.
fn sink_run(args: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast-bench"))
        .args(args.split_whitespace())
        .args([
            "--sink",
            "--json",
            "--quiet",
            "--duration",
            "20",
            "--drain",
            "5",
        ])
        .output()
        .expect("ringcast-bench runs");
    assert!(output.status.success(), "{args}: {output:?}");
    String::from_utf8(output.stdout).expect("JSON is UTF-8")
}

/// The whole number after `"key":` in a flat JSON object.
fn field(json: &str, key: &str) -> u64 {
    let at = json.find(&format!("\"{key}\":")).expect(key) + key.len() + 3;
    let digits: String = json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect(key)
}

fn assert_complete(args: &str, expected: u64) {
    let json = sink_run(args);
    assert_eq!(field(&json, "expected"), expected, "{json}");
    assert_eq!(field(&json, "deliveries"), expected, "{json}");
    for key in ["lost", "duplicated", "reordered"] {
        assert_eq!(field(&json, key), 0, "{key}: {json}");
    }
}

#[test]
fn sink_forwards_fanout_at_qos_0_and_1() {
    assert_complete("fanout -n 20 --qos 0 --count 2000", 40_000);
    assert_complete("fanout -n 20 --qos 1 --count 2000", 40_000);
}

#[test]
fn sink_routes_pairs_and_fanin_by_topic_at_qos_1() {
    assert_complete("pairs -n 10 --qos 1 --count 1000", 10_000);
    assert_complete("fanin -n 10 --qos 1 --count 1000", 10_000);
}

#[test]
fn sink_refuses_what_it_cannot_forward() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast-bench"))
        .args(["fanout", "--sink", "--qos", "2"])
        .output()
        .expect("ringcast-bench runs");
    assert!(!output.status.success());
}
